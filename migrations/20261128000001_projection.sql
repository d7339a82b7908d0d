-- The projection of the event log. Every table here can be thrown away and rebuilt from
-- chat.events; the projector writes them, the REST API and the socket-edge read them.

CREATE TABLE conversations (
    conversation_id   uuid PRIMARY KEY,
    title             varchar(300) NOT NULL,
    is_group          boolean NOT NULL,
    created_by        varchar(50) NOT NULL,
    created_at        timestamptz NOT NULL,
    -- The latest message, denormalised so the conversation list is one indexed query.
    -- latest_seq is the message's offset in the conversation's partition (log order).
    latest_seq        bigint,
    latest_message_id uuid,
    latest_sender_id  varchar(50),
    latest_content    varchar(1000),
    latest_sent_at    timestamptz
);

CREATE TABLE participants (
    conversation_id uuid NOT NULL REFERENCES conversations (conversation_id),
    user_id         varchar(50) NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
-- "My conversations": the hottest read (the extension polls it every minute per user).
CREATE INDEX participants_by_user ON participants (user_id, conversation_id);

CREATE TABLE messages (
    conversation_id uuid NOT NULL,
    -- The event's offset in its partition: every message of a conversation is in one
    -- partition, so seq is the conversation's log order, stable even when sent_at ties.
    seq             bigint NOT NULL,
    message_id      uuid NOT NULL UNIQUE,
    sender_id       varchar(50) NOT NULL,
    content         varchar(1000) NOT NULL,
    sent_at         timestamptz NOT NULL,
    temp_message_id text NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);

-- One row per (conversation, user) instead of one per message and participant: the user has
-- read every message with seq <= read_seq.
CREATE TABLE read_markers (
    conversation_id uuid NOT NULL,
    user_id         varchar(50) NOT NULL,
    read_seq        bigint NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);

-- Where the projection stands in the log, written in the same transaction as the rows, so a
-- batch is applied exactly once whatever happens to the process.
CREATE TABLE projector_positions (
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);
