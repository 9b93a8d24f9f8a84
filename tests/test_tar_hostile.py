"""Hostile WebDataset tar shards: every malformed header is one counted bad record naming the file and the
byte offset, never a hang or an exception; duplicate sample keys keep the first sample and are counted."""

from __future__ import annotations

import io
import json
import random
import signal
import tarfile
from contextlib import contextmanager

import pytest

from percli.core.data.shards import BLOCK, BadRecords, read_batches
from tests.test_shards import ENTRIES, add_member, cli, kept_records, pool_records, write_tar


@contextmanager
def finishes_within(seconds: float):
    """Fail (instead of hanging the suite) when the block runs longer than `seconds`."""
    def stop(*_):
        raise TimeoutError(f"the tar reader still runs after {seconds} s: a header that does not move it on")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read_all(path, text_field="txt", seconds=5.0):
    """(keys, texts, bad) of one shard read to its end."""
    bad = BadRecords()
    with finishes_within(seconds):
        batches = list(read_batches(path, text_field, bad, batch_size=3))
    return [k for b in batches for k in b.keys], [t for b in batches for t in b.texts], bad


def member_bytes(name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> bytes:
    """One ustar member: header, data, padding (any type, e.g. a PAX 'x' header with hand-made records)."""
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = len(data), kind, 1_700_000_000
    return info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % BLOCK)


def with_checksum(header: bytes) -> bytes:
    """`header` with its checksum field made right, so a corrupt field gets past the checksum test."""
    header = header[:148] + b" " * 8 + header[156:]
    return header[:148] + b"%06o\0 " % sum(header) + header[156:]


def pax_record(text: bytes) -> bytes:
    """One PAX record, "<length> <text>\\n", its length counting its own digits."""
    n = len(text) + 3
    while len(b"%d %s\n" % (n, text)) != n:
        n += 1
    return b"%d %s\n" % (n, text)


# Sample 0, then sample 1 that a broken header follows: sample 1 is the bad record (the broken member may be its).
GOOD = member_bytes("k0.txt", b"first") + member_bytes("k0.json", b"{}") + member_bytes("k1.txt", b"cut short")


@pytest.mark.parametrize("record", [
    b"0 mtime=1700000000\n",  # zero length: the old loop never moved on
    b"-9 mtime=1700000000\n",  # negative: it moved backwards
    b"0 path=k1.txt\n",
    b"3 path=k1.txt\n",  # shorter than any record
    b"99999999999999999999 path=k1.txt\n",  # past the header's end
    b"x path=k1.txt\n",  # not a number
    b"15 path=k1.txt\n" + b"12 path\n",  # a second record without "="
    b"14 path=k1.txt!",  # no newline where the record ends
])
def test_bad_pax_record_is_one_bad_record_with_its_offset(tmp_path, record):
    shard = tmp_path / "pax.tar"
    shard.write_bytes(GOOD + member_bytes("././@PaxHeader", record, tarfile.XHDTYPE)
                      + member_bytes("k2.txt", b"second") + bytes(2 * BLOCK))
    keys, texts, bad = read_all(shard)
    assert (keys, texts) == (["k0"], ["first"])
    assert bad.count == 1 and bad.examples[0]["file"] == str(shard) and bad.examples[0]["sample"] == 1
    assert bad.examples[0]["offset"] == len(GOOD) and "PAX record" in bad.examples[0]["reason"]
    assert f"at byte {len(GOOD)}" in bad.examples[0]["reason"]


def test_good_pax_path_and_size_records_and_gnu_long_names_are_read(tmp_path):
    long = "d/" * 70 + "k2"
    pax = pax_record(b"path=k2.txt") + pax_record(b"size=6")
    shard = tmp_path / "ok.tar"
    shard.write_bytes(GOOD + member_bytes("././@PaxHeader", pax, tarfile.XHDTYPE)
                      + member_bytes("ignored.txt", b"")[:BLOCK] + b"second" + bytes(BLOCK - 6)
                      + member_bytes("././@LongLink", long.encode() + b".txt\0", tarfile.GNUTYPE_LONGNAME)
                      + member_bytes("short.txt", b"third") + bytes(2 * BLOCK))
    keys, texts, bad = read_all(shard)
    assert (keys, texts, bad.count) == (["k0", "k1", "k2", long], ["first", "cut short", "second", "third"], 0)


@pytest.mark.parametrize("name,broken", [
    ("size past the end of the file", lambda h: h[:124] + b"00000077777\0" + h[136:]),
    ("huge base-256 size", lambda h: h[:124] + b"\x80" + b"\xff" * 11 + h[136:]),
    ("non-numeric size", lambda h: h[:124] + b"0000000012x\0" + h[136:]),
    ("negative size", lambda h: h[:124] + b"-0000000001\0" + h[136:]),
    ("bad checksum", lambda h: h[:148] + b"0000000\0" + h[156:]),
    ("non-numeric checksum", lambda h: h[:148] + b"zz\0     " + h[156:]),
])
def test_corrupt_header_fields_are_one_bad_record_with_its_offset(tmp_path, name, broken):
    header = member_bytes("k2.txt", b"second")
    fix = (lambda h: h) if "checksum" in name else with_checksum
    shard = tmp_path / "bad.tar"
    shard.write_bytes(GOOD + fix(broken(header[:BLOCK])) + header[BLOCK:] + bytes(2 * BLOCK))
    keys, _, bad = read_all(shard)
    # A header whose checksum and fields parse but whose data is missing still names its member: the
    # sample before it (k1) was complete and is kept. A header with a bad field may not be trusted for its
    # name, so the sample being read when it came is dropped with it.
    complete = ["k0", "k1"] if "size past" in name or "base-256" in name else ["k0"]
    assert keys == complete and bad.count == 1, name
    assert bad.examples[0]["offset"] == len(GOOD) and bad.examples[0]["file"] == str(shard)


def test_truncated_shards_keep_the_samples_before_the_cut(tmp_path):
    full = write_tar(tmp_path / "full.tar", pool_records(6))
    with tarfile.open(full) as archive:
        members = archive.getmembers()
    data = full.read_bytes()
    all_keys, _, _ = read_all(full, None)
    # (data end, padded end) of each member: a cut between them is a complete shard without end blocks
    ends = [(m.offset_data + m.size, m.offset_data - (-m.size // BLOCK) * BLOCK) for m in members]
    shard = tmp_path / "cut.tar"
    for cut in range(1, ends[-1][0], 37):
        shard.write_bytes(data[:cut])
        keys, _, bad = read_all(shard, None)
        assert keys == all_keys[:len(keys)], cut
        if any(lo <= cut <= hi for lo, hi in ends):
            assert bad.count == 0, cut
            continue
        assert bad.count == 1 and bad.examples[0]["file"] == str(shard), cut
        assert 0 <= bad.examples[0]["offset"] < cut and bad.examples[0]["offset"] % BLOCK == 0, cut
    # a GNU long-name header whose member is missing: the old reader ended there silently
    shard.write_bytes(data[:ends[-1][1]] + member_bytes("././@LongLink", b"k9.txt\0", tarfile.GNUTYPE_LONGNAME))
    keys, _, bad = read_all(shard, None)
    assert keys == all_keys[:-1] and bad.count == 1 and bad.examples[0]["offset"] == ends[-1][1]


def mixed_shard(tmp_path):
    """A valid shard with ustar, PAX (long and non-ASCII names) and GNU long-name members; its header blocks."""
    parts = []
    for i, fmt in enumerate((tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
            for key in (f"s{i}a", "dir/" * (40 * (i > 0)) + f"s{i}é" * (i > 0) + f"s{i}b"):
                add_member(archive, f"{key}.txt", f"text of {key}".encode() * 9)
                add_member(archive, f"{key}.json", json.dumps({"n": i}).encode())
        parts.append(buffer.getvalue().rstrip(b"\0"))  # drop the end-of-archive blocks to join the parts
    joined = b""
    for part in parts:
        joined += part + bytes(-len(part) % BLOCK)
    path = tmp_path / "mixed.tar"
    path.write_bytes(joined + bytes(2 * BLOCK))
    with tarfile.open(path) as archive:
        headers = [block for m in archive.getmembers() for block in range(m.offset, m.offset_data, BLOCK)]
    return path, headers


def test_fuzzed_shards_always_finish_without_an_exception(tmp_path):
    """1,000 seeded mutations (cuts, random bytes in header blocks, often with the checksum made right)."""
    original, headers = mixed_shard(tmp_path)
    data = original.read_bytes()
    keys, _, bad = read_all(original, None)
    assert len(keys) == 6 and bad.count == 0 and len(headers) > 12
    rng = random.Random(26)
    shard = tmp_path / "fuzz.tar"
    counted = 0
    for trial in range(1000):
        mutated = bytearray(data)
        if rng.random() < 0.2:
            del mutated[rng.randrange(len(data)):]
        else:
            block = rng.choice(headers)
            for _ in range(rng.randint(1, 6)):
                at = block + (rng.choice((0, 100, 124, 136, 148, 156, 345)) + rng.randrange(12)
                              if rng.random() < 0.6 else rng.randrange(BLOCK))  # fields; PAX lengths at 0
                mutated[at] = rng.choice((0, 0x20, 0x30, 0x2D, 0x37, 0x0A, 0x3D, 0x80, 0xFF, rng.randrange(256)))
            if rng.random() < 0.6:
                mutated[block:block + BLOCK] = with_checksum(bytes(mutated[block:block + BLOCK]))
        shard.write_bytes(bytes(mutated))
        keys, _, bad = read_all(shard, None, seconds=10.0)  # raises on a hang; any escaping exception fails
        assert len(keys) <= 6 + 6, trial
        for example in bad.examples:
            assert example["file"] == str(shard) and 0 <= example["offset"] <= len(mutated), (trial, example)
        counted += bad.count > 0
    assert counted > 300  # most mutations break the shard, and each is counted


def test_duplicate_keys_keep_the_first_sample_and_are_counted(tmp_path):
    shard = tmp_path / "dup.tar"
    shard.write_bytes(member_bytes("a.jpg", b"img a1") + member_bytes("a.txt", b"first a")
                      + member_bytes("b.jpg", b"img b") + member_bytes("b.txt", b"only b")
                      + member_bytes("a.jpg", b"img a2") + member_bytes("a.txt", b"second a")
                      + member_bytes("c.txt", b"only c") + member_bytes("a.txt", b"third a") + bytes(2 * BLOCK))
    bad = BadRecords()
    batches = list(read_batches(shard, "txt", bad))
    assert [k for b in batches for k in b.keys] == ["a", "b", "c"]
    assert [t for b in batches for t in b.texts] == ["first a", "only b", "only c"]
    assert [i for b in batches for i in b.index.tolist()] == [0, 1, 3]  # positions are places in the archive
    assert [m.data for m in batches[0].items[0].members] == [b"img a1", b"first a"]
    assert bad.duplicate_keys == 2 and bad.count == 0


def test_a_non_utf8_key_is_a_bad_record_and_index_output_still_writes(tmp_path):
    name = bytearray(member_bytes("kX.txt", b"a dog"))
    name[1] = 0xFF  # "k\xff.txt": the index writer's UTF-8 JSON could not hold the key
    shard = tmp_path / "names.tar"
    shard.write_bytes(member_bytes("k0.txt", b"a dog") + with_checksum(bytes(name[:BLOCK])) + bytes(name[BLOCK:])
                      + member_bytes("k2.txt", b"a dog") + bytes(2 * BLOCK))
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(["dog"]))
    summary = json.loads(cli(shard, "-m", meta, "--text-field", "txt", "--output-format", "index", "--json",
                             "-o", tmp_path / "out").stdout)
    assert summary["kept"] == 2 and summary["bad_records"] == 1
    assert summary["bad_examples"][0]["sample"] == 1 and summary["bad_examples"][0]["offset"] == 2 * BLOCK
    lines = (tmp_path / "out" / "curated" / "names.index.jsonl").read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["k0", "k2"]


def test_curate_metaclip_honours_and_reports_duplicate_keys(tmp_path):
    records = pool_records(40)
    shard = write_tar(tmp_path / "pool.tar", records)
    twin = dict(records[3], text=records[5]["text"])  # the key of sample 3, the text of sample 5
    with tarfile.open(shard, "a") as archive:
        add_member(archive, f"{twin['id']}.jpg", b"another image")
        add_member(archive, f"{twin['id']}.txt", twin["text"].encode())
        add_member(archive, f"{twin['id']}.json", json.dumps(twin).encode())
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps(ENTRIES))
    common = [shard, "-m", meta, "--text-field", "txt", "--json"]
    run = json.loads(cli(*common, "--t", 1e9, "-o", tmp_path / "run").stdout)
    match = json.loads(cli("match", *common, "-o", tmp_path / "m").stdout)
    count = json.loads(cli("count", tmp_path / "m", "-m", meta, "-o", tmp_path / "c", "--json").stdout)
    assert run["duplicate_keys"] == match["duplicate_keys"] == count["duplicate_keys"] == 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["duplicate_keys"] == 1
    assert run["texts_read"] == 39 and run["bad_records"] == 1  # 40 samples, the null text bad, the twin skipped
    reference = json.loads(cli(write_tar(tmp_path / "ref.tar", records), *common[1:], "--t", 1e9,
                               "-o", tmp_path / "ref").stdout)
    assert reference["duplicate_keys"] == 0 and reference["matched"] == run["matched"]
    kept = kept_records(tmp_path / "run" / "curated" / "pool.tar")
    assert kept == kept_records(tmp_path / "ref" / "curated" / "ref.tar")  # as if the twin were not there
    with tarfile.open(tmp_path / "run" / "curated" / "pool.tar") as archive:
        assert b"another image" not in [archive.extractfile(m).read() for m in archive.getmembers()]


def test_clip_training_pairs_read_tar_through_the_one_reader(tmp_path):
    """The image-text dataset (CLIP training, zero-shot retrieval) keeps the first of repeated keys and counts
    the rest, and a shard that breaks off keeps the samples before the break."""
    import io

    from PIL import Image

    from percli.core.data.image_text import ImageTextDataset

    def png(colour):
        out = io.BytesIO()
        Image.new("RGB", (8, 8), colour).save(out, format="PNG")
        return out.getvalue()

    shard = tmp_path / "pairs.tar"
    shard.write_bytes(member_bytes("a.png", png((255, 0, 0))) + member_bytes("a.txt", b"red square")
                      + member_bytes("b.png", png((0, 255, 0))) + member_bytes("b.txt", b"green square")
                      + member_bytes("a.png", png((0, 0, 255))) + member_bytes("a.txt", b"blue square")
                      + bytes(2 * BLOCK))
    pairs = ImageTextDataset(str(shard), text_field="txt")
    assert [pairs[i]["caption"] for i in range(len(pairs))] == ["red square", "green square"]
    assert pairs[0]["image"][:, 0, 0].tolist() == [1.0, 0.0, 0.0]  # the first 'a', not the later one
    assert pairs.bad_records.duplicate_keys == 1
    broken = tmp_path / "broken.tar"
    broken.write_bytes(shard.read_bytes()[: 5 * BLOCK + 20])  # cut inside the second sample's image data
    cut = ImageTextDataset(str(broken), text_field="txt")
    assert [cut[i]["caption"] for i in range(len(cut))] == ["red square"]
    assert cut.bad_records.count == 1 and "byte" in cut.bad_records.examples[0]["reason"]
