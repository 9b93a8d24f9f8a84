"""Caption manifests (AudioCaps / Clotho CSV, MSR-VTT / VALOR JSON and JSONL) and strong labels
(AudioSet-Strong, DESED), read from small files written here, hostile ones included."""

import dataclasses
import gzip
import json
from pathlib import Path

import pytest

from percli.core.data.caption_manifest import Event, read_caption_manifest, read_strong_labels


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_audiocaps_csv_groups_caption_rows_by_youtube_id(tmp_path):
    manifest = read_caption_manifest(write(tmp_path / "test.csv", (
        "audiocap_id,youtube_id,start_time,caption\n"
        "103549,--0w1YA1Hm4,30,A vehicle driving as a man and woman are talking and laughing\n"
        "103548,--0w1YA1Hm4,30,\"Men and women talking, then a vehicle passes\"\n"
        "103541,-AheI8Epim4,30,Birds chirping and a dog barks\n"
        "103550,--0w1YA1Hm4,30,A vehicle passes by as people talk\n")), extra_keys=["start_time"])
    assert manifest.media_key == "youtube_id"
    assert manifest.items == ["--0w1YA1Hm4", "-AheI8Epim4"]  # ids stay ids
    assert manifest.caption_item == [0, 0, 0, 1]
    assert manifest.captions[1] == "Men and women talking, then a vehicle passes"
    assert manifest.extras == {"start_time": ["30", "30"]}
    assert manifest.counts == {"rows": 4, "bad_rows": 0, "empty_captions": 0, "duplicate_captions": 0,
                               "items_without_captions": 0, "items": 2, "captions": 4}


def test_clotho_csv_reads_numbered_caption_columns_and_resolves_paths(tmp_path):
    path = write(tmp_path / "clotho_captions_evaluation.csv", (
        "file_name,caption_1,caption_2,caption_10\n"
        "Santa Motor.wav,a car engine idles,the motor hums,an engine runs\n"
        "rain.wav,rain falls on a roof,,water drips\n"))
    manifest = read_caption_manifest(path)
    assert manifest.items == [str(tmp_path / "Santa Motor.wav"), str(tmp_path / "rain.wav")]
    assert manifest.captions == ["a car engine idles", "the motor hums", "an engine runs",
                                 "rain falls on a roof", "water drips"]
    assert manifest.caption_item == [0, 0, 0, 1, 1]
    assert manifest.counts["empty_captions"] == 1
    moved = read_caption_manifest(path, media_root=tmp_path / "evaluation")
    assert moved.items[0] == str(tmp_path / "evaluation" / "Santa Motor.wav")


def test_caption_columns_are_ordered_by_number(tmp_path):
    manifest = read_caption_manifest(write(tmp_path / "c.csv", "caption_10,file_name,caption_2\nten,a.wav,two\n"))
    assert manifest.captions == ["two", "ten"]


def test_jsonl_with_one_caption_per_line(tmp_path):
    lines = [{"video": "clips/v1.mp4", "caption": "a man sings"}, {"video": "clips/v2.mp4", "caption": "a cat"},
             {"video": "clips/v1.mp4", "caption": "someone sings"}]
    manifest = read_caption_manifest(write(tmp_path / "msrvtt.jsonl", "".join(json.dumps(x) + "\n" for x in lines)))
    assert manifest.items == [str(tmp_path / "clips/v1.mp4"), str(tmp_path / "clips/v2.mp4")]
    assert manifest.caption_item == [0, 0, 1] and manifest.captions == ["a man sings", "someone sings", "a cat"]


def test_gzipped_jsonl_is_read(tmp_path):
    path = tmp_path / "m.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"audio": "a.wav", "captions": ["one", "two"]}) + "\n")
    assert read_caption_manifest(path).captions == ["one", "two"]


def test_percli_captions_jsonl_reads_audio_by_default_and_video_on_request(tmp_path):
    line = {"id": "clip0", "video": "clips/clip0.mp4", "audio": "clips/clip0.wav", "captions": ["a dog barks"]}
    path = write(tmp_path / "captions.jsonl", json.dumps(line) + "\n")
    assert read_caption_manifest(path).items == [str(tmp_path / "clips/clip0.wav")]
    assert read_caption_manifest(path, media_key="video").items == [str(tmp_path / "clips/clip0.mp4")]
    assert read_caption_manifest(path, media_key="id").items == ["clip0"]


def test_json_list_and_msrvtt_sentences(tmp_path):
    valor = [{"video_id": "v1", "desc": "a band plays"}, {"video_id": 7, "desc": "rain"}]
    manifest = read_caption_manifest(write(tmp_path / "valor.json", json.dumps(valor)), caption_keys=["desc"])
    assert manifest.items == ["v1", "7"] and manifest.captions == ["a band plays", "rain"]
    msrvtt = {"videos": [], "sentences": [{"caption": "a man talks", "video_id": "video7010", "sen_id": 1}]}
    assert read_caption_manifest(write(tmp_path / "msrvtt.json", json.dumps(msrvtt))).items == ["video7010"]


def test_bom_and_crlf_csv(tmp_path):
    path = write(tmp_path / "bom.csv", "\ufefffile_name,caption_1\r\na.wav,a door slams\r\nb.wav,steps\r\n")
    manifest = read_caption_manifest(path)
    assert manifest.media_key == "file_name" and manifest.captions == ["a door slams", "steps"]


def test_hostile_rows_are_counted_not_fatal(tmp_path):
    path = write(tmp_path / "messy.csv", (
        "youtube_id,caption\n"
        "a,a dog barks\n"
        ",no media here\n"               # line 3: no media value
        "a,a dog barks\n"                # duplicate (item, caption)
        "b,   \n"                        # blank caption; item b is left without captions
        "c,an unquoted, comma\n"         # line 6: three cells
        "\n"
        "d,birds\n"
        "e"))                            # line 9: truncated last line
    manifest = read_caption_manifest(path)
    assert manifest.items == ["a", "d"] and manifest.captions == ["a dog barks", "birds"]
    assert manifest.counts == {"rows": 7, "bad_rows": 3, "empty_captions": 1, "duplicate_captions": 1,
                               "items_without_captions": 1, "items": 2, "captions": 2}
    assert [(bad["line"], bad["reason"].split(" ")[0]) for bad in manifest.bad_examples] == [
        (3, "no"), (6, "3"), (9, "1")]
    assert manifest.bad_examples[0]["file"] == str(path)


def test_hostile_json_records_are_counted(tmp_path):
    lines = ['{"audio": "a.wav", "captions": ["fine", "", null]}', '{"audio": "b.wav", "caption": 5}',
             '["not", "an", "object"]', '{"audio": "c.wav", "captions": ["trunc']
    manifest = read_caption_manifest(write(tmp_path / "m.jsonl", "\n".join(lines)))
    assert manifest.captions == ["fine"] and manifest.counts["empty_captions"] == 2
    assert manifest.counts["bad_rows"] == 3 and manifest.counts["rows"] == 4
    assert sorted(bad["line"] for bad in manifest.bad_examples) == [2, 3, 4]
    wrong_type = write(tmp_path / "w.json", json.dumps([{"audio": "a.wav", "captions": [1, 2]}, 3,
                                                         {"audio": "b.wav", "captions": "ok"}]))
    manifest = read_caption_manifest(wrong_type)
    assert manifest.captions == ["ok"] and sorted(bad["item"] for bad in manifest.bad_examples) == [0, 1]


@pytest.mark.parametrize("name, text, kwargs, message", [
    ("empty.csv", "", {}, "empty.csv is empty"),
    ("blank.csv", "\n\n", {}, "is empty"),
    ("empty.jsonl", "", {}, "holds no JSON object"),
    ("empty.json", "", {}, "not valid JSON"),
    ("cut.json", '[{"audio": "a.wav", "caption": "x"}', {}, "line 1, column"),
    ("obj.json", '{"audio": "a.wav"}', {}, "JSON list of objects"),
    ("m.txt", "file,caption\n", {}, "unknown manifest type"),
    ("m.csv", "name,caption\na,b\n", {}, "no media column"),
    ("m.csv", "file,words\na,b\n", {}, "no caption column"),
    ("m.csv", "file,caption\na,b\n", {"media_key": "video"}, "media_key 'video' is not a column"),
    ("m.csv", "file,caption\na,b\n", {"caption_keys": ["text"]}, "missing \\['text'\\]"),
    ("m.csv", "file,caption\na,b\n", {"extra_keys": ["start"]}, "extra_keys \\['start'\\]"),
    ("m.csv", "file,caption\n,b\na,\n", {}, "no usable caption .*2 rows, 1 bad"),
])
def test_unusable_manifests_raise_clear_errors(tmp_path, name, text, kwargs, message):
    with pytest.raises(ValueError, match=message):
        read_caption_manifest(write(tmp_path / name, text), **kwargs)


def test_non_utf8_manifest_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not UTF-8"):
        read_caption_manifest(write(tmp_path / "latin.csv", "file,caption\na.wav,caf\u00e9\n", "latin-1"))


# --------------------------------------------------------------------------- strong labels


def test_audioset_strong_layout(tmp_path):
    labels = read_strong_labels(write(tmp_path / "audioset_eval_strong.tsv", (
        "segment_id\tstart_time_seconds\tend_time_seconds\tlabel\n"
        "YxM5xEkrZRpw_30000\t0.000\t1.546\t/m/09x0r\n"
        "YxM5xEkrZRpw_30000\t2.1\t10.0\t/m/0jbk\n")))
    assert labels.events == [Event("YxM5xEkrZRpw_30000", 0.0, 1.546, "/m/09x0r"),
                             Event("YxM5xEkrZRpw_30000", 2.1, 10.0, "/m/0jbk")]
    assert labels.files == ["YxM5xEkrZRpw_30000"] and labels.counts["events"] == 2


def test_desed_layout_counts_untimed_rows_and_keeps_their_files(tmp_path):
    labels = read_strong_labels(write(tmp_path / "validation.tsv", (
        "filename\tonset\toffset\tevent_label\n"
        "Y00pbt6aJV8Y_350.000_360.000.wav\t0.0\t9.971\tVacuum_cleaner\n"
        "Yquiet.wav\t\t\t\n"
        "Yweak.wav\t\t\tSpeech\n"
        "Ytabsless.wav\n")))
    assert [e.label for e in labels.events] == ["Vacuum_cleaner"]
    assert labels.files == ["Y00pbt6aJV8Y_350.000_360.000.wav", "Yquiet.wav", "Yweak.wav", "Ytabsless.wav"]
    assert labels.counts == {"rows": 4, "bad_rows": 0, "untimed_rows": 3, "duplicate_events": 0, "events": 1}


def test_header_columns_may_come_in_any_order(tmp_path):
    labels = read_strong_labels(write(tmp_path / "l.tsv", "event_label\tfilename\toffset\tonset\ndog\ta.wav\t2\t1\n"))
    assert labels.events == [Event("a.wav", 1.0, 2.0, "dog")]


def test_headerless_bom_crlf_file(tmp_path):
    labels = read_strong_labels(write(tmp_path / "l.tsv", "\ufeffa.wav\t0.5\t1.5\tdog\r\nb.wav\t1\t2\tcat\r\n"))
    assert labels.events == [Event("a.wav", 0.5, 1.5, "dog"), Event("b.wav", 1.0, 2.0, "cat")]
    assert labels.counts["rows"] == 2


def test_hostile_strong_label_rows_are_counted_not_fatal(tmp_path):
    labels = read_strong_labels(write(tmp_path / "l.tsv", (
        "filename\tonset\toffset\tevent_label\n"
        "a.wav\t0.5\t1.5\tdog\n"
        "a.wav\tabc\t1.5\tdog\n"       # line 3: onset is not a number
        "a.wav\t2.0\t2.0\tdog\n"       # line 4: offset not after onset
        "a.wav\t0.5\t1.5\tdog\n"       # duplicate
        "a.wav,0.5,1.5,cat\n"          # line 6: not tab-separated
        "a.wav\t-1\t1.5\tdog\n"        # line 7: negative onset
        "a.wav\t1\t2\t\n"              # line 8: no label
        "\t1\t2\tdog\n"                # line 9: no file
        "a.wav\tinf\t2\tdog\n"         # line 10: not finite
        "b.wav\t3.0\t4")))             # line 11: truncated last line
    assert labels.events == [Event("a.wav", 0.5, 1.5, "dog")]
    assert labels.counts == {"rows": 10, "bad_rows": 8, "untimed_rows": 0, "duplicate_events": 1, "events": 1}
    assert [bad["line"] for bad in labels.bad_examples] == [3, 4, 6, 7, 8, 9, 10, 11]
    assert labels.files == ["a.wav"]
    assert "not a number" in labels.bad_examples[0]["reason"] and "truncated" in labels.bad_examples[-1]["reason"]


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("\r\n\n", "is empty"),
    ("name\tstart\tstop\tclass\na.wav\t1\t2\tdog\n", "names no file column"),
    ("filename\tonset\toffset\tevent_label\na.wav\t\t\t\n", "no event with an onset and offset"),
    ("a.wav\tabc\t1\tdog\n", "looks like a header"),
    ("filename,onset,offset,event_label\na.wav,1,2,dog\n", "no event .*must be tab-separated"),
])
def test_unusable_strong_label_files_raise_clear_errors(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        read_strong_labels(write(tmp_path / "l.tsv", text))


def test_event_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Event("a.wav", 0.0, 1.0, "dog").onset = 2.0
