-- Every message sent updates its conversation's row (the latest message), and every read its
-- read marker: half of each page is left free so that the new version of a row fits on its
-- page (a HOT update, no new index entry). Full pages sent most updates elsewhere, with an
-- index entry each, and left the tables several times their live size.
ALTER TABLE conversations SET (fillfactor = 50);
ALTER TABLE read_markers SET (fillfactor = 50);
