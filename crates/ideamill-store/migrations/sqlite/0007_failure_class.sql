-- Why a failed item failed, as far as what to do about it goes: 'quality'
-- (the work was judged and found wanting) or 'infra' (the provider or the
-- host never let it be judged). Set when an item fails, cleared when it runs
-- again; NULL on items that are not failed and on those that failed before
-- this column existed (their class is unknown).
ALTER TABLE items ADD COLUMN failure_class TEXT CHECK (failure_class IN ('quality', 'infra'));
