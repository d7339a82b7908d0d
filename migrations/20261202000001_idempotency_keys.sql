-- Conversations created under an Idempotency-Key (ConversationCreated version 2): a retry of
-- the request with the same key from the same user answers with the first conversation. The
-- first creation in the log wins; the key is kept as long as the log keeps the event.
CREATE TABLE idempotency_keys (
    created_by      varchar(50) NOT NULL,
    idempotency_key text NOT NULL,
    conversation_id uuid NOT NULL,
    PRIMARY KEY (created_by, idempotency_key)
);
