-- Item ids are never given twice. `items.id` is a rowid without
-- AUTOINCREMENT, and SQLite hands out max(id) + 1: after `prune` deleted the
-- newest items, a new item would get an old id and inherit its workspace
-- folder, its inbox mapping or links that name it. The highest item id ever
-- deleted is kept here, by a trigger so that every delete counts, and the
-- store gives new items ids above it and above every id in use.
-- (PostgreSQL's identity columns never give an id twice.)
CREATE TABLE id_high_water (
    name TEXT PRIMARY KEY,
    id INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO id_high_water (name, id) SELECT 'items', COALESCE(MAX(id), 0) FROM items;

CREATE TRIGGER items_high_water AFTER DELETE ON items
BEGIN
    UPDATE id_high_water SET id = old.id WHERE name = 'items' AND id < old.id;
END;
