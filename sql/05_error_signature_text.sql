-- error_signature_text(message): a scalar macro, one row per call: the
-- normalised first line of a state message, so failures that differ only in
-- their data group together. Masked, in this order: ISO timestamps (<time>),
-- UUIDs (<uuid>), quoted values (<str>), URLs (<url>), paths (<path>), hex
-- (0x..., and words of hex digits mixing digits and letters: <hex>), numbers
-- and digits inside words (<n>); whitespace collapsed; at most 200
-- characters. HTTP statuses are kept, so a 401 and a 500 are different
-- signatures: a status after "HTTP", "HTTP/1.1", "HTTP status", "status=" or
-- "status_code=", before requests' "Client Error"/"Server Error" or aiohttp's
-- ", message=", or in httpx's "Client error '401 Unauthorized'" (unquoted to
-- "Client error HTTP 401 Unauthorized"), is marked with chr(1) before the
-- masks, skipped by the number mask, and the mark removed at the end (a
-- process's "status code 137" stays a number).
-- Each pass costs ~2 us per message: reports normalise each
-- distinct message once, after filtering and grouping, never every run. An empty or NULL message is '(no message)'.
-- signature_of(text), the second macro here, is the short hash every
-- signature uses: the first 8 hex characters of the text's md5 (stable across
-- DuckDB versions and machines).
CREATE OR REPLACE MACRO error_signature_text(message) AS
coalesce(nullif(left(trim(replace(
    regexp_replace(regexp_replace(regexp_replace(regexp_replace(
    regexp_replace(regexp_replace(regexp_replace(regexp_replace(regexp_replace(
    regexp_replace(regexp_replace(regexp_replace(
        split_part(trim(coalesce(message, ''), ' ' || chr(9) || chr(10) || chr(13)), chr(10), 1),
        '(error|response) ''([1-5][0-9][0-9]) ([^''\n]*)''', '\1 HTTP ' || chr(1) || '\2 \3', 'g'),
        '(?i)(\bHTTP(?:/[0-9.]+)?(?: status)?(?: code)?:?\s+|\bstatus(?:_code)?=)([1-5][0-9][0-9])\b', '\1' || chr(1) || '\2', 'g'),
        '(^|[^\w.])([1-5][0-9][0-9])( (?:Client|Server) Error|, message=)', '\1' || chr(1) || '\2\3', 'g'),
        '\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}([.,]\d+)?)?(Z|[+-]\d{2}:?\d{2}|\s?UTC)?', '<time>', 'g'),
        '[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}', '<uuid>', 'g'),
        '(^|[^\w])(''[^''\n]*''|"[^"\n]*")', '\1<str>', 'g'),
        '[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s''"]+', '<url>', 'g'),
        '(^|[\s(\[=:,])(~?(/[\w.\-@]+)+/?|[A-Za-z]:\\[^\s''",)]+)', '\1<path>', 'g'),
        '\b0[xX][0-9a-fA-F]+\b', '<hex>', 'g'),
        '\b([0-9]+[a-fA-F]|[a-fA-F]+[0-9])[0-9a-fA-F]*\b', '<hex>', 'g'),
        '(^|[^\x01\d])\d+([.,]\d+)*', '\1<n>', 'g'),
        '[ \t\r\f\v]{2,}|[\t\r\f\v]', ' ', 'g'),
    chr(1), '')
), 200), ''), '(no message)');

CREATE OR REPLACE MACRO signature_of(text) AS left(md5(text), 8);
