-- What a request log shows for each call beside its metadata: a preview of the last user
-- message and the policies that acted on the call.
-- Keep in step with ../sqlite/0003_call_preview.sql.

-- The start of the last user message as it went upstream (NULL before this column, or when
-- --store-payloads keeps no final request).
ALTER TABLE calls ADD COLUMN preview TEXT;

-- The names of the policies that recorded an event for the call, as a JSON array of strings
-- (NULL before this column: none known).
ALTER TABLE calls ADD COLUMN policies TEXT;
