CREATE TABLE item (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  shelf_id int NOT NULL,
  sku text NOT NULL,
  qty int NOT NULL DEFAULT 0 CHECK (qty >= 0)
);
CREATE INDEX ASYNC item_shelf ON item (shelf_id);
CREATE UNIQUE INDEX ASYNC item_sku ON item (sku);
