"""Running jobs: the nightly run of one date, and many dates (catch-up, backfill)."""
