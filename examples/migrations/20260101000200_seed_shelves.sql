INSERT INTO shelf (id, name, capacity) VALUES
  (1, 'kitchen', 20),
  (2, 'garage', 50),
  (3, 'office', 10);
