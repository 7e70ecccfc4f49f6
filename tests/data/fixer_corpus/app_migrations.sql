-- V1__accounts.sql
CREATE TABLE account (
    id serial PRIMARY KEY,
    email varchar(320) NOT NULL UNIQUE,
    plan varchar(20) NOT NULL DEFAULT 'free',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_created ON account (created_at);

-- V2__invoices.sql
CREATE TABLE invoice (
    id bigserial PRIMARY KEY,
    account_id integer NOT NULL REFERENCES account (id),
    amount_cents bigint NOT NULL,
    status varchar(10) NOT NULL DEFAULT 'open'
);
CREATE INDEX CONCURRENTLY invoice_account ON invoice (account_id);
CREATE SEQUENCE invoice_number_seq START 1000 CACHE 20;

-- V3__add_currency.sql
ALTER TABLE invoice ADD COLUMN currency char(3) DEFAULT 'EUR';
ALTER TABLE invoice ADD COLUMN paid_at timestamptz;
ALTER TABLE invoice ADD CONSTRAINT invoice_amount_positive CHECK (amount_cents >= 0);

-- V4__backfill.sql
BEGIN;
ALTER TABLE account ADD COLUMN country char(2);
UPDATE account SET country = 'DE' WHERE country IS NULL;
CREATE INDEX account_country ON account (country);
COMMIT;

-- V5__unique_invoice_number.sql
ALTER TABLE invoice ADD COLUMN number bigint;
ALTER TABLE invoice ADD CONSTRAINT invoice_number_key UNIQUE (number);
ALTER TABLE invoice ALTER COLUMN status SET NOT NULL;
TRUNCATE TABLE invoice;
