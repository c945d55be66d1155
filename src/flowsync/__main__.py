from flowsync.cli import main

main()
