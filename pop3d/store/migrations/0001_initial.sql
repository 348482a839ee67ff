-- The mail store shared with the rest of the mail system (ARCHITECTURE.md section 3).
-- Addresses are unique case-insensitively; every lookup goes through lower(address).

CREATE TABLE users (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    address      text NOT NULL,
    display_name text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    disabled_at  timestamptz
);
CREATE UNIQUE INDEX users_address_lower_key ON users (lower(address));

CREATE TABLE user_addresses (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    address    text NOT NULL,
    verified   boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX user_addresses_address_lower_key ON user_addresses (lower(address));
CREATE INDEX user_addresses_user_id_idx ON user_addresses (user_id);

-- prefix is NULL for keys written by parts of the mail system that do not use prefixes.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL,
    prefix       text UNIQUE,
    key_hash     text NOT NULL,
    scopes       text[] NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_user_active_idx ON api_keys (user_id) WHERE revoked_at IS NULL;
CREATE INDEX api_keys_prefix_active_idx ON api_keys (prefix) WHERE revoked_at IS NULL;

-- raw and size are NULL for rows written without the original bytes; pop3d renders those
-- from the columns and fills in size once.
CREATE TABLE emails (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    message_id        text,
    from_address      text,
    from_name         text,
    subject           text,
    text_body         text,
    html_body         text,
    received_at       timestamptz NOT NULL DEFAULT now(),
    in_reply_to       text,
    references_header text,
    raw               bytea,
    size              bigint CHECK (size >= 0)
);
CREATE INDEX emails_received_at_id_idx ON emails (received_at, id);

CREATE TABLE email_recipients (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email_id     uuid NOT NULL REFERENCES emails (id) ON DELETE CASCADE,
    user_id      uuid REFERENCES users (id) ON DELETE CASCADE,
    address      text NOT NULL,
    display_name text,
    kind         text NOT NULL CHECK (kind IN ('to', 'cc', 'bcc')),
    is_read      boolean NOT NULL DEFAULT false
);
CREATE INDEX email_recipients_user_email_idx ON email_recipients (user_id, email_id);
CREATE INDEX email_recipients_email_idx ON email_recipients (email_id);

CREATE TABLE email_attachments (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email_id     uuid NOT NULL REFERENCES emails (id) ON DELETE CASCADE,
    position     integer NOT NULL DEFAULT 0,
    file_name    text,
    content_type text,
    content      bytea NOT NULL,
    size         bigint NOT NULL CHECK (size >= 0)
);
CREATE INDEX email_attachments_email_idx ON email_attachments (email_id, position);

-- Stored uncompressed out of line, so substring() reads only the slice it returns: RETR
-- streams large messages in slices, and a compressed value would be decompressed from its
-- start for every slice.
ALTER TABLE emails ALTER COLUMN raw SET STORAGE EXTERNAL;
ALTER TABLE email_attachments ALTER COLUMN content SET STORAGE EXTERNAL;
