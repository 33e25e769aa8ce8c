-- One database per saga service (the postgres image runs this once, on an empty volume).
-- Each service creates its own tables, outbox included, when it starts.
CREATE DATABASE orders;
CREATE DATABASE products;
CREATE DATABASE deliveries;
