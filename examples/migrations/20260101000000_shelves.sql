-- Shelves hold items. Plain statements: each DDL runs in its own transaction.
CREATE TABLE shelf (
  id int PRIMARY KEY,
  name text NOT NULL,
  capacity int NOT NULL CHECK (capacity > 0)
);
CREATE INDEX ASYNC shelf_name ON shelf (name);
