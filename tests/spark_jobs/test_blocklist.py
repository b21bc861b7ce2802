"""Hash-list import and matching: whole lists or nothing, and matches from stored digests only."""

import hashlib
from datetime import date, datetime, timezone

import pyarrow as pa
import pytest

from infra.delta_store import Lake, Lineage
from infra.spark import read_table
from infra.tables import BLOCKLIST, CANDIDATES, IMAGES
from spark_jobs.blocklist import BlocklistError, KINDS, image_matches, import_blocklist, parse_hash_list, url_matches

MD5 = KINDS["image-md5"]


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def test_plain_list_skips_comments_and_blank_lines_and_lowercases():
    text = f"# a list\n\n{md5('a').upper()}\n  {md5('b')}  # trailing note\n"
    assert parse_hash_list(text, MD5) == [(3, md5("a")), (4, md5("b"))]


def test_csv_list_takes_the_named_column():
    text = f"note,md5\nfirst,{md5('a')}\nsecond,{md5('b')}\n\n"
    assert parse_hash_list(text, MD5) == [(2, md5("a")), (3, md5("b"))]
    assert parse_hash_list(f"hash\n{md5('c')}\n", MD5) == [(2, md5("c"))]


def test_invalid_lines_are_reported_by_number():
    text = f"{md5('a')}\nnot-a-hash\n{md5('b')[:-1]}\n{hashlib.sha1(b'x').hexdigest()}\n"
    with pytest.raises(BlocklistError, match="3 invalid lines") as err:
        parse_hash_list(text, MD5)
    assert "line 2" in str(err.value) and "line 3" in str(err.value) and "line 4" in str(err.value)
    with pytest.raises(BlocklistError, match="names no column"):
        parse_hash_list(f"url,note\n{md5('a')},x\n", MD5)
    with pytest.raises(BlocklistError, match="no digests"):
        parse_hash_list("# empty\n", MD5)


def test_import_is_all_or_nothing_and_idempotent(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    good = tmp_path / "good.txt"
    good.write_text(f"{md5('a')}\n{md5('b')}\n{md5('a')}\n")
    version, imported = import_blocklist(lake, good, "list-a", "image-md5", Lineage(run_id="i1"), date(2024, 8, 30))
    assert (version, imported) == (0, 2)
    # The same list again replaces itself; another kind of the same source sits beside it.
    import_blocklist(lake, good, "list-a", "image-md5", Lineage(run_id="i2"))
    urls = tmp_path / "urls.txt"
    urls.write_text(hashlib.sha256(b"http://x/1.jpg").hexdigest() + "\n")
    import_blocklist(lake, urls, "list-a", "url-sha256", Lineage(run_id="i3"))
    rows = lake.read(BLOCKLIST).to_pylist()
    assert sorted((r["kind"], r["digest"]) for r in rows) == sorted(
        [("image-md5", md5("a")), ("image-md5", md5("b")), ("url-sha256", hashlib.sha256(b"http://x/1.jpg").hexdigest())]
    )
    assert {r["line"] for r in rows if r["digest"] == md5("a")} == {1}
    before = lake.version(BLOCKLIST)
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{md5('c')}\nzzz\n")
    with pytest.raises(BlocklistError, match="line 2"):
        import_blocklist(lake, bad, "list-a", "image-md5", Lineage(run_id="bad"))
    assert lake.version(BLOCKLIST) == before
    with pytest.raises(BlocklistError, match="unknown hash kind"):
        import_blocklist(lake, good, "list-a", "md5", Lineage())


def test_matches_come_from_stored_digests_and_url_strings(spark, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    now = datetime.now(timezone.utc)
    urls = {f"u{i}": f"http://img.example/{i}.jpg" for i in range(4)}
    lake.replace_partitions(
        CANDIDATES,
        pa.Table.from_pylist(
            [{"uid": uid, "url": url, "caption": "a red circle", "page_url": "http://p/", "crawl_id": "c",
              "warc_file": "w0", "record_offset": i, "fetch_date": now} for i, (uid, url) in enumerate(urls.items())],
            schema=CANDIDATES.schema,
        ),
        ["w0"], Lineage(),
    )
    body = {uid: f"bytes of {uid}".encode() for uid in urls}
    lake.replace_partitions(
        IMAGES,
        pa.Table.from_pylist(
            [{"uid": uid, "url": urls[uid], "warc_file": "w0", "status": "ok", "retryable": False, "attempts": 1,
              "fetched_at": now, **{h: hashlib.new(h, body[uid]).hexdigest() for h in ("md5", "sha1", "sha256")}}
             for uid in urls],
            schema=IMAGES.schema,
        ),
        ["w0"], Lineage(),
    )
    lists = {
        "by-md5.txt": ("image-md5", hashlib.md5(body["u0"]).hexdigest()),
        "by-sha1.txt": ("image-sha1", hashlib.sha1(body["u1"]).hexdigest()),
        "by-url.txt": ("url-sha256", hashlib.sha256(urls["u2"].encode()).hexdigest()),
    }
    for name, (kind, digest) in lists.items():
        (tmp_path / name).write_text(digest + "\n")
        import_blocklist(lake, tmp_path / name, name.removesuffix(".txt"), kind, Lineage())

    images = read_table(spark, lake, IMAGES)
    found = {(r["uid"], r["source"], r["kind"]) for r in image_matches(spark, lake, images).collect()}
    assert found == {("u0", "by-md5", "image-md5"), ("u1", "by-sha1", "image-sha1")}
    pairs = read_table(spark, lake, CANDIDATES)
    assert [(r["uid"], r["kind"]) for r in url_matches(spark, lake, pairs).collect()] == [("u2", "url-sha256")]
