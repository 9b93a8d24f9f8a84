"""TFRecord framing (both CRCs checked, damage counted and skipped), the Example/SequenceExample codec (checked
against protobuf itself) and the YouTube-8M readers of TFRecords in the official layouts, NPZ and Parquet."""

import struct

import numpy as np
import pytest
import torch

from percli.core.data.images import BadSample
from percli.core.data.shards import BadRecords
from percli.core.data.tfrecord import (
    decode_example,
    decode_sequence_example,
    encode_example,
    encode_sequence_example,
    frame_record,
    index_records,
    masked_crc32c,
    read_records,
    write_records,
)
from percli.core.data.yt8m import (
    YT8MDataset,
    YT8MLayout,
    dequantize,
    frame_example,
    quantize,
    video_example,
    yt8m_files,
)

SMALL = YT8MLayout(level="video", feature_sizes=(8, 4), num_classes=10)


def _videos(n: int, rng: np.random.Generator) -> list[tuple[str, list[int], np.ndarray, np.ndarray]]:
    return [(f"v{i}", sorted(rng.choice(10, 1 + i % 3, replace=False).tolist()),
             rng.normal(size=(3 + i, 8)).astype(np.float32), rng.normal(size=(3 + i, 4)).astype(np.float32))
            for i in range(n)]


def test_crc32c_and_framing_follow_tensorflow():
    import google_crc32c

    assert google_crc32c.value(b"123456789") == 0xE3069283  # the CRC-32C check value
    crc = google_crc32c.value(b"abc")
    assert masked_crc32c(b"abc") == ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
    record = frame_record(b"payload")
    assert struct.unpack("<Q", record[:8])[0] == 7 and record[12:19] == b"payload" and len(record) == 7 + 16
    assert struct.unpack("<I", record[8:12])[0] == masked_crc32c(record[:8])


def _tf_messages():
    """tf.train.Example and SequenceExample built by protobuf from example.proto/feature.proto's fields."""
    descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
    from google.protobuf import descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="percli_test_example.proto", package="t", syntax="proto3")

    def message(name, *fields, oneof=None):
        m = proto.message_type.add(name=name)
        if oneof:
            m.oneof_decl.add(name=oneof)
        for number, field_name, kind, type_name, label in fields:
            field = m.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
            if oneof:
                field.oneof_index = 0
        return m

    rep, opt = f.LABEL_REPEATED, f.LABEL_OPTIONAL
    message("BytesList", (1, "value", f.TYPE_BYTES, None, rep))
    message("FloatList", (1, "value", f.TYPE_FLOAT, None, rep))
    message("Int64List", (1, "value", f.TYPE_INT64, None, rep))
    message("Feature", (1, "bytes_list", f.TYPE_MESSAGE, ".t.BytesList", opt),
            (2, "float_list", f.TYPE_MESSAGE, ".t.FloatList", opt),
            (3, "int64_list", f.TYPE_MESSAGE, ".t.Int64List", opt), oneof="kind")
    for name, value in (("Features", "Feature"), ("FeatureLists", "FeatureList")):
        m = message(name, (1, "feature" if name == "Features" else "feature_list", f.TYPE_MESSAGE,
                           f".t.{name}.Entry", rep))
        entry = m.nested_type.add(name="Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=opt)
        entry.field.add(name="value", number=2, type=f.TYPE_MESSAGE, label=opt, type_name=f".t.{value}")
    message("FeatureList", (1, "feature", f.TYPE_MESSAGE, ".t.Feature", rep))
    message("Example", (1, "features", f.TYPE_MESSAGE, ".t.Features", opt))
    message("SequenceExample", (1, "context", f.TYPE_MESSAGE, ".t.Features", opt),
            (2, "feature_lists", f.TYPE_MESSAGE, ".t.FeatureLists", opt))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Example")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("t.SequenceExample")))


def test_codec_reads_and_writes_what_protobuf_does():
    example_cls, sequence_cls = _tf_messages()
    rgb = np.linspace(-1, 1, 6, dtype=np.float32)
    ours = encode_example({"id": "abc", "labels": np.array([3, 1 << 40, -5]), "mean_rgb": rgb})
    parsed = example_cls.FromString(ours).features.feature
    assert parsed["id"].bytes_list.value == [b"abc"]
    assert list(parsed["labels"].int64_list.value) == [3, 1 << 40, -5]
    assert np.array_equal(np.asarray(parsed["mean_rgb"].float_list.value, np.float32), rgb)
    theirs = example_cls()
    theirs.features.feature["labels"].int64_list.value.extend([7, -1])
    theirs.features.feature["x"].float_list.value.extend([0.5, 2.0])
    theirs.features.feature["id"].bytes_list.value.append(b"vid")
    decoded = decode_example(theirs.SerializeToString())
    assert decoded["labels"].tolist() == [7, -1] and decoded["x"].tolist() == [0.5, 2.0] and decoded["id"] == [b"vid"]
    sequence = sequence_cls()
    sequence.context.feature["labels"].int64_list.value.append(2)
    for frame in (b"\x00\x01", b"\xff\x10"):
        sequence.feature_lists.feature_list["rgb"].feature.add().bytes_list.value.append(frame)
    context, lists = decode_sequence_example(sequence.SerializeToString())
    assert context["labels"].tolist() == [2] and lists["rgb"] == [[b"\x00\x01"], [b"\xff\x10"]]
    ours = encode_sequence_example({"labels": [2]}, {"rgb": [b"\x00\x01", b"\xff\x10"]})
    assert sequence_cls.FromString(ours) == sequence


def test_unpacked_repeated_scalars_are_read():
    # FloatList/Int64List with one field per value (wire types 5 and 0), as proto2 writers emit them
    floats = b"".join(b"\x0d" + struct.pack("<f", v) for v in (1.5, -2.0))
    ints = b"\x08\x04\x08\x09"
    feature = lambda kind, body: bytes([kind << 3 | 2, len(body)]) + body  # noqa: E731
    entry = lambda key, value: b"\x0a" + bytes([len(key)]) + key + b"\x12" + bytes([len(value)]) + value  # noqa: E731
    features = b"".join(b"\x0a" + bytes([len(e)]) + e for e in (entry(b"f", feature(2, floats)),
                                                                 entry(b"i", feature(3, ints))))
    decoded = decode_example(b"\x0a" + bytes([len(features)]) + features)
    assert decoded["f"].tolist() == [1.5, -2.0] and decoded["i"].tolist() == [4, 9]


def test_dequantize_is_the_official_formula_and_quantize_inverts_it():
    codes = np.arange(256, dtype=np.uint8)
    assert dequantize(codes)[0] == pytest.approx(-2 + 4 / 512) and dequantize(codes)[255] == pytest.approx(2 + 4 / 512)
    assert np.array_equal(quantize(dequantize(codes)), codes)
    assert quantize(np.array([-9.0, 9.0])).tolist() == [0, 255]


def test_official_layouts_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    videos = _videos(5, rng)
    write_records(tmp_path / "video.tfrecord", (video_example(i, y, {"rgb": r.mean(0), "audio": a.mean(0)})
                                                 for i, y, r, a in videos))
    write_records(tmp_path / "frame.tfrecord", (frame_example(i, y, {"rgb": r, "audio": a}) for i, y, r, a in videos))
    level = YT8MDataset([tmp_path / "video.tfrecord"], SMALL)
    frame = YT8MDataset([tmp_path / "frame.tfrecord"], YT8MLayout("frame", feature_sizes=(8, 4), num_classes=10,
                                                                 max_frames=4))
    assert len(level) == len(frame) == 5 and level.bad_records.count == 0
    for i, (video_id, labels, rgb, audio) in enumerate(videos):
        item = level[i]
        assert torch.nonzero(item["labels"])[:, 0].tolist() == labels and level.read(i)[0] == video_id
        assert torch.allclose(item["features"], torch.from_numpy(np.concatenate([rgb.mean(0), audio.mean(0)])))
        frames = frame[i]
        n = min(len(rgb), 4)
        assert frames["num_frames"] == n and frames["frames"].shape == (4, 12)
        want = dequantize(quantize(np.concatenate([rgb, audio], 1)[:n]))
        assert torch.equal(frames["frames"][:n], torch.from_numpy(want)) and not frames["frames"][n:].any()


def _write_three(path) -> list[bytes]:
    payloads = [encode_example({"id": f"v{i}", "labels": [i], "mean_rgb": np.full(8, i, np.float32),
                                "mean_audio": np.zeros(4, np.float32)}) for i in range(3)]
    write_records(path, payloads)
    return payloads


def test_a_payload_crc_mismatch_is_counted_and_skipped(tmp_path):
    path = tmp_path / "bad.tfrecord"
    payloads = _write_three(path)
    data = bytearray(path.read_bytes())
    second = len(payloads[0]) + 16 + 12  # the second record's first payload byte
    data[second + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    bad = BadRecords()
    assert list(read_records(path, bad)) == [payloads[0], payloads[2]]
    assert bad.count == 1 and "payload CRC mismatch" in bad.examples[0]["reason"]
    dataset = YT8MDataset([path], SMALL)
    assert len(dataset) == 3 and dataset[2]["labels"][2] == 1
    with pytest.raises(BadSample, match="payload CRC mismatch"):
        dataset[1]


def test_a_length_crc_mismatch_ends_the_file_with_one_bad_record(tmp_path):
    path = tmp_path / "bad.tfrecord"
    payloads = _write_three(path)
    data = bytearray(path.read_bytes())
    data[len(payloads[0]) + 16] ^= 0x01  # the second record's length
    path.write_bytes(bytes(data))
    bad = BadRecords()
    assert index_records(path, bad) == [(0, len(payloads[0]))]
    assert bad.count == 1 and "length CRC mismatch" in bad.examples[0]["reason"]
    assert bad.examples[0]["offset"] == len(payloads[0]) + 16


@pytest.mark.parametrize("third, reason", [(6, "truncated header"), (12 + 10, "truncated record")])
def test_a_truncated_file_keeps_its_whole_records(tmp_path, third, reason):
    path = tmp_path / "cut.tfrecord"
    payloads = _write_three(path)
    whole = len(payloads[0]) + len(payloads[1]) + 32
    path.write_bytes(path.read_bytes()[: whole + third])  # the third record cut after `third` bytes
    bad = BadRecords()
    assert list(read_records(path, bad)) == payloads[:2] and bad.count == 1
    assert reason in bad.examples[0]["reason"] and bad.examples[0]["offset"] == whole


def test_a_zero_length_file_holds_no_record(tmp_path):
    path = tmp_path / "empty.tfrecord"
    path.write_bytes(b"")
    bad = BadRecords()
    assert list(read_records(path, bad)) == [] and bad.count == 0
    assert len(YT8MDataset([path], SMALL)) == 0


def test_npz_and_parquet_tables(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rgb, audio = np.arange(24, dtype=np.float32).reshape(3, 8), np.ones((3, 4), np.float32)
    multi_hot = np.zeros((3, 10), np.int64)
    multi_hot[0, [1, 2]] = multi_hot[2, 9] = 1
    np.savez(tmp_path / "hot.npz", ids=np.array(["a", "b", "c"]), labels=multi_hot, mean_rgb=rgb, mean_audio=audio)
    np.savez(tmp_path / "lists.npz", labels=np.array([[1, 2], [-1, -1], [9, -1]]), mean_rgb=rgb, mean_audio=audio)
    pq.write_table(pa.table({"id": ["a", "b", "c"], "labels": [[1, 2], [], [9]], "mean_rgb": rgb.tolist(),
                             "mean_audio": audio.tolist()}), tmp_path / "t.parquet")
    np.savez(tmp_path / "narrow.npz", labels=multi_hot, mean_rgb=rgb[:, :3], mean_audio=audio)
    dataset = YT8MDataset(yt8m_files(str(tmp_path)), SMALL)
    assert len(dataset) == 9 and dataset.bad_records.count == 1  # narrow.npz: 7-d features
    assert "features are 7-d" in dataset.bad_records.examples[0]["reason"]
    for i in range(0, 9, 3):
        assert [torch.nonzero(dataset[i + j]["labels"])[:, 0].tolist() for j in range(3)] == [[1, 2], [], [9]]
        assert torch.equal(dataset[i + 1]["features"][:8], torch.from_numpy(rgb[1]))
    assert dataset.read(0)[0] == "a"


def test_yt8m_files_expands_folders_and_globs_and_refuses_other_suffixes(tmp_path):
    for name in ("b.tfrecord", "a.tfrecord", "c.npz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in yt8m_files(str(tmp_path))] == ["a.tfrecord", "b.tfrecord", "c.npz"]
    assert [p.name for p in yt8m_files(f"{tmp_path}/b.* {tmp_path}/{{a,b}}.tfrecord")] == ["b.tfrecord", "a.tfrecord"]
    with pytest.raises(ValueError, match="not a YouTube-8M file"):
        yt8m_files(str(tmp_path / "notes.txt"))
    with pytest.raises(FileNotFoundError, match="matches no"):
        yt8m_files(str(tmp_path / "missing*.tfrecord"))
