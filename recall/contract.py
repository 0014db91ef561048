"""The guarantees a published u2i table makes to its readers (README, "Guarantees to readers", 3),
checked on the table itself against the window it was built from. Shipped with the package so
that every engine's output is held to the same contract (the test suites run it per engine), and
so that an operator can check a table an engine produced."""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def u2i_violations(u2i: pa.Table, seen: pa.Table, blocklist: list, k: int, sources: set[str]) -> list[str]:
    """What is wrong with `u2i` (empty when nothing is).

    `seen` holds the window's valid (user_id, item_id) pairs; every user there must get exactly
    min(k, unseen allowed items) rows, where the catalogue is the window's items minus the
    blocklist: no seen or blocklisted item, no unknown id, finite scores, ranks 1..n without gaps,
    rows sorted by user then rank, a source named on every row.
    """
    problems: list[str] = []
    rows = u2i.to_pandas()
    pairs = seen.to_pandas().drop_duplicates()
    catalogue = set(pairs["item_id"]) - set(blocklist)
    users = pairs.groupby("user_id")["item_id"].agg(set)
    if rows.empty:
        return [] if users.empty else [f"no rows for {len(users)} users of the window"]
    if not rows["item_id"].isin(catalogue).all():
        bad = rows.loc[~rows["item_id"].isin(catalogue), "item_id"].iloc[0]
        problems.append(f"item {bad!r} is blocklisted or not in the window's catalogue")
    if not np.isfinite(rows["score"].to_numpy(np.float64)).all():
        problems.append("non-finite scores")
    if not set(rows["source"]).issubset(sources):
        problems.append(f"unknown sources {sorted(set(rows['source']) - sources)}")
    order = rows[["user_id", "rank"]].reset_index(drop=True)
    if not order.equals(order.sort_values(["user_id", "rank"], kind="stable").reset_index(drop=True)):
        problems.append("rows are not sorted by user, then rank")
    grouped = rows.groupby("user_id")
    counts = grouped.size()
    missing = set(users.index) - set(counts.index)
    if missing:
        problems.append(f"{len(missing)} users of the window have no rows (e.g. {next(iter(missing))!r})")
    strangers = set(counts.index) - set(users.index)
    if strangers:
        problems.append(f"{len(strangers)} users are not in the window (e.g. {next(iter(strangers))!r})")
    ranks_ok = grouped["rank"].apply(lambda r: r.tolist() == list(range(1, len(r) + 1)))
    if not ranks_ok.all():
        problems.append(f"ranks with gaps for user {ranks_ok.index[~ranks_ok.to_numpy()][0]!r}")
    dup = rows.duplicated(["user_id", "item_id"])
    if dup.any():
        problems.append(f"user {rows.loc[dup, 'user_id'].iloc[0]!r} gets an item twice")
    listed = grouped["item_id"].agg(set)
    for user, items in users.items():
        got = listed.get(user, set())
        expected = min(k, len(catalogue - items))
        if len(got) != expected:
            problems.append(f"user {user!r}: {len(got)} rows, expected min(k, unseen allowed) = {expected}")
            break
        if got & items:
            problems.append(f"user {user!r} is recommended an item they interacted with: {sorted(got & items)[0]!r}")
            break
    return problems
