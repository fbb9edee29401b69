"""imagenet2012 and image_folder: official layouts written to tmp dirs, prepared without TensorFlow."""

import io
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from cnnlab import data
from cnnlab.data import __main__ as cli
from cnnlab.data import builders, formats, images, loading

WNIDS = ["n00000001", "n00000002", "n00000003"]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _photo(rng, height, width, mode="RGB"):
    """A smooth random picture (compresses like a photo) in `mode`."""
    small = rng.integers(0, 256, (max(height // 8, 2), max(width // 8, 2), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    return image.convert(mode)


def _encode(image, fmt="JPEG"):
    out = io.BytesIO()
    image.save(out, format=fmt, quality=90) if fmt == "JPEG" else image.save(out, format=fmt)
    return out.getvalue()


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return out.getvalue()


@pytest.fixture
def fake_labels(monkeypatch):
    """3 classes; validation images 1..6 labelled by a fake validation_labels list."""
    validation = ["n00000002", "n00000001", "n00000003", "n00000003", "n00000001", "n00000002"]
    monkeypatch.setattr(images, "imagenet_labels", lambda: (list(WNIDS), list(validation)))
    return validation


def _imagenet_files(rng):
    """{wnid: {file name: bytes}} for train and {file name: bytes} for validation, with the special cases."""
    train = {wnid: {} for wnid in WNIDS}
    for c, wnid in enumerate(WNIDS):
        for i, (h, w) in enumerate([(375, 500), (40, 64), (61, 33)]):
            train[wnid][f"{wnid}_{i + 1}.JPEG"] = _encode(_photo(rng, h, w))
    train["n00000001"]["n00000001_9.JPEG"] = _encode(_photo(rng, 30, 40, "CMYK"))  # CMYK JPEG
    train["n00000002"]["n00000002_9.JPEG"] = _encode(_photo(rng, 30, 40, "L"))  # grey JPEG
    train["n00000003"]["n00000003_9.JPEG"] = _encode(_photo(rng, 30, 40), "PNG")  # PNG named .JPEG
    validation = {f"ILSVRC2012_val_{k:08d}.JPEG": _encode(_photo(rng, 20 + k, 30)) for k in range(1, 7)}
    return train, validation


def _write_imagenet(manual, train, validation, outer_extra=None):
    folder = manual / "imagenet2012"
    folder.mkdir(parents=True, exist_ok=True)
    members = {f"{wnid}.tar": _tar_bytes(files) for wnid, files in train.items()}
    members.update(outer_extra or {})
    (folder / builders.IMAGENET_TRAIN_TAR).write_bytes(_tar_bytes(members))
    (folder / builders.IMAGENET_VAL_TAR).write_bytes(_tar_bytes(dict(reversed(validation.items()))))


def _records(name, split, data_dir):
    source = loading.data_source(name, split, data_dir=data_dir)
    return [source[i] for i in range(len(source))]


def _decode(payload):
    with Image.open(io.BytesIO(payload)) as image:
        return image.format, image.mode, image.size


def test_imagenet2012_prepares_official_layout_without_tensorflow(tmp_path, rng, fake_labels, monkeypatch):
    from tensorflow_datasets.core import shuffle
    # TFDS's shuffler spills past this many bytes through tf.io.gfile (TensorFlow): with a 0-byte budget
    # any use of it fails here, as it would on the real 140 GB without TensorFlow.
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 0)
    monkeypatch.setattr(builders.EncodedImageBuilder, "shard_bytes", 20_000)  # several shards
    train, validation = _imagenet_files(rng)
    _write_imagenet(tmp_path / "manual", train, validation)
    path = data.prepare("imagenet2012", data_dir=tmp_path / "dd", manual_dir=tmp_path / "manual")
    assert path == tmp_path / "dd" / "cnnlab_imagenet2012" / "1.0.0"
    shards = sorted(p.name for p in path.glob("cnnlab_imagenet2012-train.array_record-*"))
    assert len(shards) > 2 and shards[0].endswith(f"-00000-of-{len(shards):05d}")
    assert not list(path.glob(".*"))  # no temporary shard names left
    records = _records("imagenet2012", "train", tmp_path / "dd")
    assert len(records) == 12
    assert [r["file_name"].decode() for r in records] == [name for files in train.values() for name in files]
    by_name = {r["file_name"].decode(): r for r in records}
    for wnid, files in train.items():
        for name, payload in files.items():
            record = by_name[name]
            assert record["label"] == WNIDS.index(wnid)
            if name in ("n00000001_9.JPEG", "n00000003_9.JPEG"):  # CMYK and PNG: re-encoded
                assert record["image"] != payload
                fmt, mode, size = _decode(record["image"])
                assert (fmt, mode, size) == ("JPEG", "RGB", (40, 30))
            else:  # RGB and grey JPEGs: the official bytes, untouched
                assert record["image"] == payload
    val = _records("imagenet2012", "validation", tmp_path / "dd")
    assert sorted(r["file_name"].decode() for r in val) == sorted(validation)
    for r in val:  # ILSVRC2012_val_<k> takes line k of validation_labels.txt, whatever the tar order
        k = int(r["file_name"].decode()[15:23])
        assert r["label"] == WNIDS.index(fake_labels[k - 1])
        assert r["image"] == validation[r["file_name"].decode()]
    info = data.info("imagenet2012", data_dir=tmp_path / "dd")
    assert info.prepared and info.class_names == WNIDS and info.split_sizes == {"train": 12, "validation": 6}
    assert info.image_shape == (None, None, 3) and all(0.05 < m < 0.95 for m in info.mean)
    with pytest.raises(ValueError, match="streamed.*data_source"):
        data.load("imagenet2012", "train", data_dir=tmp_path / "dd")
    assert "tensorflow" not in sys.modules


def test_imagenet_label_facts_come_from_installed_tfds():
    labels, validation = images.imagenet_label_files()
    wnids, val_wnids = images.imagenet_labels()
    assert labels.is_file() and validation.is_file()
    assert len(wnids) == len(set(wnids)) == 1000 and wnids[0] == "n01440764"
    assert len(val_wnids) == 50000 and set(val_wnids) == set(wnids)
    assert len(images.CMYK_IMAGES) == 22 and images.PNG_IMAGES == {"n02105855_2933.JPEG"}


def test_imagenet_listing_says_what_is_missing_and_where(tmp_path, capsys, fake_labels, rng):
    args = ["--data_dir", str(tmp_path / "dd")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    manual = tmp_path / "dd" / "downloads" / "manual"
    assert "imagenet2012   not prepared  train 1,281,167, validation 50,000" in out
    assert f"put both (unextracted) in {manual}/imagenet2012/" in out
    (manual / "imagenet2012").mkdir(parents=True)
    (manual / "imagenet2012" / builders.IMAGENET_VAL_TAR).write_bytes(_tar_bytes({}))
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert f"raw files incomplete: missing {manual}/imagenet2012/ILSVRC2012_img_train.tar" in out
    assert cli.main(["prepare", "imagenet2012", *args]) == 1
    assert f"imagenet2012: FAILED: imagenet2012: missing {manual}/imagenet2012/ILSVRC2012_img_train.tar" \
        in capsys.readouterr().err


def _tar_member_not_jpeg(train, validation):
    train["n00000002"]["n00000002_7.JPEG"] = b"GIF89a not really"
    return "n00000002.tar:n00000002_7.JPEG", {}


def _outer_member_not_a_class_tar(train, validation):
    return "ILSVRC2012_img_train.tar:README.txt", {"README.txt": b"hello"}


def _truncated_val_jpeg(train, validation):
    name = "ILSVRC2012_val_00000004.JPEG"
    validation[name] = validation[name][: len(validation[name]) // 2]
    return name, {}


def _missing_validation_label(train, validation):
    validation["ILSVRC2012_val_00000007.JPEG"] = validation["ILSVRC2012_val_00000001.JPEG"]
    return "ILSVRC2012_val_00000007.JPEG", {}


@pytest.mark.parametrize("damage", [_tar_member_not_jpeg, _outer_member_not_a_class_tar, _truncated_val_jpeg,
                                    _missing_validation_label])
def test_imagenet_bad_input_names_the_file_or_is_skipped_and_listed(tmp_path, rng, fake_labels, damage):
    train, validation = _imagenet_files(rng)
    bad_name, outer_extra = damage(train, validation)
    _write_imagenet(tmp_path / "manual", train, validation, outer_extra)
    kwargs = dict(data_dir=tmp_path / "dd", manual_dir=tmp_path / "manual")
    with pytest.raises(formats.RawFormatError, match=bad_name.replace(".", r"\.") + ".*--skip_bad"):
        data.prepare("imagenet2012", **kwargs)
    assert sorted(p.name for p in (tmp_path / "dd").iterdir()) == [".cnnlab_imagenet2012.lock"]
    with pytest.raises(FileNotFoundError, match="not prepared"):
        loading.data_source("imagenet2012", "train", data_dir=tmp_path / "dd")
    data.prepare("imagenet2012", skip_bad=True, **kwargs)
    metadata = data.info("imagenet2012", data_dir=tmp_path / "dd")
    reader = loading._encoded_reader("imagenet2012", tmp_path / "dd")
    assert reader.info.metadata["num_skipped"] == 1
    assert reader.info.metadata["skipped"][0][0].endswith(bad_name)
    images_in_tars = sum(len(files) for files in train.values()) + len(validation)
    assert sum(metadata.split_sizes.values()) == images_in_tars - (0 if outer_extra else 1)


def _write_folder(root, rng, classes=("tulip", "daisy", "rose"), per_class=5):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            fmt, ext = ("PNG", "png") if i == 0 else ("JPEG", "JPG" if i == 1 else "jpg")
            (root / name / f"img{i}.{ext}").write_bytes(_encode(_photo(rng, 30 + i, 40 + c), fmt))
    (root / classes[0] / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # dot files are ignored


def test_image_folder_prepares_sorted_classes_and_a_seeded_stratified_split(tmp_path, rng, capsys):
    _write_folder(tmp_path / "flowers", rng)
    args = ["--data_dir", str(tmp_path / "dd")]
    assert cli.main(["prepare", "image_folder", "--name=flowers", f"--root={tmp_path / 'flowers'}",
                     "--test_fraction=0.4", *args]) == 0
    assert "Prepared flowers: 9 train / 6 test" in capsys.readouterr().out
    info = data.info("flowers", data_dir=tmp_path / "dd")
    assert info.class_names == ["daisy", "rose", "tulip"] and info.split_sizes == {"train": 9, "test": 6}
    train = _records("flowers", "train", tmp_path / "dd")
    test = _records("flowers", "test", tmp_path / "dd")
    assert sorted(np.bincount([r["label"] for r in test]).tolist()) == [2, 2, 2]
    names = [r["file_name"].decode() for r in train + test]
    assert len(set(names)) == 15 and "tulip/.DS_Store" not in names
    for r in train + test:  # the file bytes as they are, the label of the class folder
        name = r["file_name"].decode()
        assert r["image"] == (tmp_path / "flowers" / name).read_bytes()
        assert r["label"] == info.class_names.index(name.split("/")[0])
    expected = images.stratified_split(
        [(f"{c}/img{i}.{'png' if i == 0 else 'JPG' if i == 1 else 'jpg'}", label)
         for label, c in enumerate(info.class_names) for i in range(5)], 0.4, 0)[1]
    assert [(r["file_name"].decode(), r["label"]) for r in test] == sorted(expected)
    assert cli.main(args) == 0
    assert "flowers" in capsys.readouterr().out
    with pytest.raises(ValueError, match="'flowers' holds encoded JPEG/PNG images.*streamed"):
        data.load("flowers", "train", data_dir=tmp_path / "dd")
    assert data.load("digits", "test", data_dir=tmp_path / "dd").images.shape == (359, 8, 8, 1)


def test_image_folder_with_a_test_root(tmp_path, rng):
    _write_folder(tmp_path / "train", rng)
    _write_folder(tmp_path / "test", rng, classes=("rose", "tulip"), per_class=2)
    data_dir = tmp_path / "dd"
    loading.prepare_image_folder("garden", tmp_path / "train", test_root=tmp_path / "test", data_dir=data_dir)
    info = data.info("garden", data_dir=data_dir)
    assert info.split_sizes == {"train": 15, "test": 4}
    assert sorted(r["label"] for r in _records("garden", "test", data_dir)) == [1, 1, 2, 2]
    with pytest.raises(formats.RawFormatError, match=r"class folders \['lily'\]"):
        (tmp_path / "test" / "lily").mkdir()
        loading.prepare_image_folder("garden2", tmp_path / "train", test_root=tmp_path / "test",
                                     data_dir=data_dir)


def _truncated(root):
    path = root / "rose" / "img3.jpg"
    path.write_bytes(path.read_bytes()[:200])
    return path


def _not_an_image_extension(root):
    path = root / "tulip" / "notes.txt"
    path.write_text("not a picture")
    return path


def _text_named_jpg(root):
    path = root / "tulip" / "fake.jpg"
    path.write_text("not a picture either")
    return path


def _empty_class(root):
    path = root / "lily"
    path.mkdir()
    return path


@pytest.mark.parametrize("damage", [_truncated, _not_an_image_extension, _text_named_jpg, _empty_class])
def test_image_folder_bad_input_names_the_file_or_is_skipped_and_listed(tmp_path, rng, damage, capsys):
    _write_folder(tmp_path / "flowers", rng)
    bad_path = damage(tmp_path / "flowers")
    args = ["prepare", "image_folder", "--name=flowers", f"--root={tmp_path / 'flowers'}",
            "--data_dir", str(tmp_path / "dd")]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert f"flowers: FAILED: {bad_path}: " in err and "--skip_bad" in err
    assert loading.image_folder_names(tmp_path / "dd") == []
    assert sorted(p.name for p in (tmp_path / "dd").iterdir()) == [".cnnlab_folder_flowers.lock"]
    assert cli.main([*args, "--skip_bad"]) == 0
    assert "(1 bad files skipped, listed in its metadata)" in capsys.readouterr().out
    metadata = loading._encoded_reader("flowers", tmp_path / "dd").info.metadata
    assert metadata["num_skipped"] == 1 and metadata["skipped"][0][0] == str(bad_path)


def test_image_folder_names_are_checked(tmp_path, rng):
    with pytest.raises(ValueError, match="taken by a built-in dataset"):
        loading.prepare_image_folder("mnist", tmp_path, data_dir=tmp_path / "dd")
    with pytest.raises(ValueError, match="lower-case letters"):
        loading.prepare_image_folder("My Photos", tmp_path, data_dir=tmp_path / "dd")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        loading.prepare_image_folder("photos", tmp_path / "nowhere", data_dir=tmp_path / "dd")
    with pytest.raises(ValueError, match="test_fraction"):
        loading.prepare_image_folder("photos", tmp_path, test_fraction=1.0, data_dir=tmp_path / "dd")


def test_image_folder_prepared_again_only_with_force(tmp_path, rng, capsys):
    _write_folder(tmp_path / "flowers", rng, per_class=2)
    args = ["prepare", "image_folder", "--name=flowers", f"--root={tmp_path / 'flowers'}",
            "--test_fraction=0.5", "--data_dir", str(tmp_path / "dd")]
    assert cli.main(args) == 0
    assert "Prepared flowers: 3 train / 3 test" in capsys.readouterr().out
    _write_folder(tmp_path / "flowers" / "more", rng, classes=("lily",), per_class=2)  # more/lily/...: a
    assert cli.main(args) == 0  # nested folder inside no class: the tree now has class "more"
    assert "flowers: already prepared in" in capsys.readouterr().out
    assert data.info("flowers", data_dir=tmp_path / "dd").num_classes == 3
    (tmp_path / "flowers" / "tulip" / "img1.JPG").write_bytes(b"broken")
    assert cli.main([*args, "--force"]) == 1  # a failed forced prepare keeps the previous data
    assert data.info("flowers", data_dir=tmp_path / "dd").split_sizes == {"train": 3, "test": 3}
    (tmp_path / "flowers" / "tulip" / "img1.JPG").unlink()
    assert cli.main([*args, "--force"]) == 0
    assert data.info("flowers", data_dir=tmp_path / "dd").class_names == ["daisy", "more", "rose", "tulip"]


def test_unknown_names_mention_the_streamed_datasets(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'photos'; .*\(in memory\), imagenet2012 and image "
                                         r"folders prepared with .*prepare image_folder"):
        data.info("photos", data_dir=tmp_path)


def test_leftovers_of_a_killed_image_folder_prepare_are_removed(tmp_path, rng, caplog):
    _write_folder(tmp_path / "flowers", rng, per_class=2)
    data_dir = tmp_path / "dd"
    leftover = data_dir / ".cnnlab_folder_flowers_staging_abc" / "cnnlab_folder_flowers" / "incomplete.x_1.0.0"
    leftover.mkdir(parents=True)
    (leftover / "cnnlab_folder_flowers-train.array_record-00000-of-00001").write_bytes(b"half")
    assert loading.image_folder_names(data_dir) == []  # never listed, never read
    with caplog.at_level("INFO", logger="cnnlab.data"):
        loading.prepare_image_folder("flowers", tmp_path / "flowers", test_fraction=0.5, data_dir=data_dir)
    assert "Removed " + str(data_dir / ".cnnlab_folder_flowers_staging_abc") in caplog.text
    assert sorted(p.name for p in data_dir.iterdir()) == [".cnnlab_folder_flowers.lock", "cnnlab_folder_flowers"]
    assert loading.image_folder_names(data_dir) == ["flowers"]


def test_prepare_all_includes_imagenet2012_when_its_tars_are_there(tmp_path, rng, fake_labels, capsys,
                                                                   monkeypatch):
    monkeypatch.setenv("CNNLAB_RAW_DIR", str(tmp_path / "raw"))  # --all: only digits and imagenet2012 here
    monkeypatch.setattr(builders, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "none")
    args = ["prepare", "--all", "--data_dir", str(tmp_path / "dd"), "--manual_dir", str(tmp_path / "manual")]
    (tmp_path / "manual" / "imagenet2012").mkdir(parents=True)
    (tmp_path / "manual" / "imagenet2012" / builders.IMAGENET_VAL_TAR).write_bytes(_tar_bytes({}))
    assert cli.main(args) == 1  # one tar of two: unusable, reported, exit 1 (as for 3 of 4 IDX files)
    assert "imagenet2012: FAILED: imagenet2012: missing" in capsys.readouterr().err
    train, validation = _imagenet_files(rng)
    _write_imagenet(tmp_path / "manual", train, validation)
    assert cli.main(args) == 0
    assert "Prepared imagenet2012: 12 train / 6 validation" in capsys.readouterr().out
