"""The index's email lookup: one hash formula at build and at lookup, and every
candidate confirmed, so a collision never finds the wrong contact."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from conftest import write
from hypothesis import given, settings
from hypothesis import strategies as st

from segengine.store.index.lookup import build_lookup, candidate_rows, hash_array, hash_text
from segengine.store.index.read import FieldColumn, load_index

TEXTS = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.text(alphabet="abcdefgh.@-_0123456789", min_size=1, max_size=300),
        st.just(""),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(texts=TEXTS, skip=st.integers(0, 3))
def test_the_vector_hash_is_the_formula_of_one_text(texts, skip):
    array = pa.array(["pad"] * skip + texts, pa.string()).slice(skip)  # a sliced array too
    expected = [hash_text(t) for t in texts]
    assert hash_array(array).tolist() == expected
    assert hash_array(array.cast(pa.large_string())).tolist() == expected


def test_word_boundaries_and_padding_change_the_hash():
    # zero padding to whole words must not make "a" and "a\0" (or "" and "\0") equal
    texts = ["", "\0", "a", "a\0", "abcdefgh", "abcdefgh\0", "abcdefghi", "ihgfedcba"]
    assert len(set(hash_array(pa.array(texts)).tolist())) == len(texts)


def test_nulls_hash_as_empty_text():
    got = hash_array(pa.array(["x", None, ""], pa.string())).tolist()
    assert got[1] == got[2] == hash_text("")


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=40, unique=True),
       picks=st.lists(st.integers(0, 1000), max_size=80))
def test_every_row_is_found_and_rows_without_a_value_are_not(values, picks):
    dictionary = pa.array(values, pa.string())
    n = len(values)
    codes = np.array([p % (n + 1) for p in picks], np.uint32)  # code n: no value
    hashes, rows = build_lookup(codes, dictionary)
    assert np.all(hashes[:-1] <= hashes[1:])
    for row, code in enumerate(codes.tolist()):
        found = candidate_rows(hashes, rows, values[code]) if code < n else None
        if code < n:
            assert row in found.tolist()
    assert sorted(rows.tolist()) == [r for r, c in enumerate(codes.tolist()) if c < n]


def test_a_collision_is_settled_by_the_dictionary(ws, tmp_path):
    ws.import_contacts(write(tmp_path / "c.csv", "email\n" + "".join(f"u{i}@x.io\n" for i in range(50))))
    email = load_index(ws.snapshot()).fields["email"]
    assert "hash" in email.arrays
    wanted = ["u7@x.io", "u49@x.io", "nobody@x.io"]
    honest = [email.rows_with(w) for w in wanted]
    scanned = FieldColumn(
        email.name, email.type, {"codes": email.arrays["codes"]}, email.lower_path,
    )
    for w, rows in zip(wanted, honest, strict=True):
        # every row given the wanted address's hash: every row is then a candidate
        same = np.full_like(email.arrays["hash"], hash_text(w) >> 32)
        colliding = FieldColumn(email.name, email.type, {**email.arrays, "hash": same}, email.lower_path)
        assert colliding.rows_with(w) == rows == scanned.rows_with(w)
    assert len(honest[0]) == len(honest[1]) == 1 and honest[2] == []
    codes = email.arrays["codes"]
    assert email.lower[int(codes[honest[1][0]])].as_py() == "u49@x.io"


def test_one_contacts_row_reads_as_the_query_engines_show_it(ws, tmp_path):
    from segengine.store.rows import read_contact

    ws.import_contacts(write(tmp_path / "c.csv", (
        "email,status,date_added,lists,state,score,vip,renewal\n"
        "ann@example.com,active,2024-01-05T10:00:00+02:00,news;vip,CA,10,true,2025-01-31\n"
        "bob@example.com,unsubscribed,2024-01-31T23:59:59Z,,,,,\n"
        + "".join(f"u{i}@x.io,active,2024-02-01T00:00:00Z,news,NY,{i},false,2025-02-01\n"
                  for i in range(300))
    )))
    snap = ws.snapshot()
    (path,) = snap.tables.contacts
    con = ws.session.connection(snap)
    columns = [c for c in snap.schema if c != "email_domain"] + ["not_a_column"]
    known = [c for c in columns if c != "not_a_column"]
    rows = con.execute(f"SELECT contact_id, {', '.join(known)} FROM contacts").fetchall()
    for contact_id, *values in rows:
        got = read_contact(path, contact_id, columns)
        assert got == {**dict(zip(known, values, strict=True)), "not_a_column": None}
    assert read_contact(path, 10**9, columns) is None
