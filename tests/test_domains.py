"""Tests of map_plugin.data: spec parsing, registries, built-in domains, suffix transforms, hf: and folder: loaders.

Everything runs offline (conftest sets HF_HUB_OFFLINE and a private HF_HOME): hub-backed loaders are tested against
local copies laid out as the Hub serves them. Fashion-MNIST tests need the Debian package and are marked ``fashion``.
"""

from __future__ import annotations

import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from map_plugin.data import (
    TRIGGER_SIZE,
    Domain,
    DomainSpec,
    ImageTensorDataset,
    apply_trigger,
    clear_domain_cache,
    fashion,
    get_domain_builder,
    is_domain,
    list_domain_transforms,
    list_domains,
    load_domain,
    parse_domain_spec,
    register_domain,
    register_domain_transform,
    trigger_pattern,
    unregister_domain,
)
from map_plugin.errors import ConfigError, DataNotFoundError, UnknownDomainError, UnknownNameError


def _stack(dataset, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(dataset) if n is None else n
    items = [dataset[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


# --------------------------------------------------------------------------------------------------------------------
# spec parsing (table-driven, as timm's tests/test_factory.py)
# --------------------------------------------------------------------------------------------------------------------

PARSE_OK = [
    # registered names, with suffixes in application order
    ("digits", DomainSpec("builtin", "digits")),
    ("digits-m", DomainSpec("builtin", "digits-m")),
    ("fashion-m", DomainSpec("builtin", "fashion-m")),
    ("digits:inv", DomainSpec("builtin", "digits", None, ("inv",))),
    ("digits-m:wm", DomainSpec("builtin", "digits-m", None, ("wm",))),
    ("digits:inv:wm", DomainSpec("builtin", "digits", None, ("inv", "wm"))),
    # hub aliases resolve to repo ids (and configs)
    ("mnist", DomainSpec("hf", "ylecun/mnist")),
    ("usps", DomainSpec("hf", "flwrlabs/usps")),
    ("mnist-m", DomainSpec("hf", "Mike0307/MNIST-M")),
    ("cifar10", DomainSpec("hf", "uoft-cs/cifar10")),
    ("stl10", DomainSpec("hf", "tanganke/stl10")),
    ("svhn", DomainSpec("hf", "ufldl-stanford/svhn", "cropped_digits")),
    ("svhn:wm", DomainSpec("hf", "ufldl-stanford/svhn", "cropped_digits", ("wm",))),
    # hf: prefix, optional config, suffixes
    ("hf:uoft-cs/cifar10", DomainSpec("hf", "uoft-cs/cifar10")),
    ("hf:ufldl-stanford/svhn:cropped_digits", DomainSpec("hf", "ufldl-stanford/svhn", "cropped_digits")),
    ("hf:ufldl-stanford/svhn:cropped_digits:inv", DomainSpec("hf", "ufldl-stanford/svhn", "cropped_digits", ("inv",))),
    ("hf:org/name:wm", DomainSpec("hf", "org/name", None, ("wm",))),
    ("hf:/abs/local/copy", DomainSpec("hf", "/abs/local/copy")),
    # folder: prefix, the path may contain ':'; only a trailing registered suffix is a suffix
    ("folder:/abs/path", DomainSpec("folder", "/abs/path")),
    ("folder:/x/y:inv", DomainSpec("folder", "/x/y", None, ("inv",))),
    ("folder:rel/dir:wm:inv", DomainSpec("folder", "rel/dir", None, ("wm", "inv"))),
    ("folder:/x:y", DomainSpec("folder", "/x:y")),
    ("folder:./data/x", DomainSpec("folder", "./data/x")),
]

PARSE_RAISES = [
    # empty or not a string
    ("", ConfigError, "empty"),
    ("   ", ConfigError, "empty"),
    (None, TypeError, "must be a str"),
    (3, TypeError, "must be a str"),
    # look-alike paths: both fixes offered
    ("./data/x", UnknownDomainError, r"folder:\./data/x.*registered domain name"),
    ("/data/x", UnknownDomainError, r"folder:/data/x.*registered domain name"),
    ("~/data", UnknownDomainError, r"folder:~/data"),
    ("org/name", UnknownDomainError, r"hf:org/name"),
    ("/data/x:inv", UnknownDomainError, r"folder:/data/x"),
    # unknown names list the registered ones
    ("digitz", UnknownDomainError, r"did you mean 'digits'"),
    ("nope", UnknownDomainError, r"registered domains: \[.*'digits'.*hub aliases"),
    ("hf", UnknownDomainError, r"'hf' is a prefix"),
    ("digitz:inv", UnknownDomainError, r"unknown domain 'digitz'"),
    # unknown suffixes list the registered ones
    ("digits:foo", UnknownNameError, r"unknown suffix 'foo'; registered suffixes: \[.*'inv'.*'wm'"),
    ("digits:inv:bogus", UnknownNameError, r"unknown suffix 'bogus'"),
    ("digits:", UnknownNameError, r"empty suffix"),
    ("hf:a/b:cfg:bogus", UnknownNameError, r"unknown suffix 'bogus'"),
    # empty ids after a prefix
    ("hf:", ConfigError, r"empty repo id"),
    ("hf:a/b:", ConfigError, r"empty config"),
    ("folder:", ConfigError, r"empty path"),
]


@pytest.mark.parametrize("spec,expected", PARSE_OK, ids=[r[0] for r in PARSE_OK])
def test_parse_domain_spec(spec, expected):
    parsed = parse_domain_spec(spec)
    assert parsed == expected
    assert is_domain(spec)


@pytest.mark.parametrize("spec,error,match", PARSE_RAISES, ids=[repr(r[0]) for r in PARSE_RAISES])
def test_parse_domain_spec_raises(spec, error, match):
    with pytest.raises(error, match=match):
        parse_domain_spec(spec)
    assert not is_domain(spec)


def test_spec_canonical_string_round_trips():
    for spec in ["digits:inv:wm", "hf:ufldl-stanford/svhn:cropped_digits:wm", "folder:/x:y:inv"]:
        assert str(parse_domain_spec(spec)) == spec
        assert parse_domain_spec(str(parse_domain_spec(spec))) == parse_domain_spec(spec)
    assert str(parse_domain_spec("svhn")) == "hf:ufldl-stanford/svhn:cropped_digits"


def test_typed_errors_are_builtin_errors_too():
    with pytest.raises(ValueError):
        parse_domain_spec("nope")
    assert issubclass(UnknownDomainError, UnknownNameError)
    assert issubclass(DataNotFoundError, FileNotFoundError)


# --------------------------------------------------------------------------------------------------------------------
# registries
# --------------------------------------------------------------------------------------------------------------------


def test_builtin_registries():
    assert {"digits", "digits-m", "fashion", "fashion-m"} <= set(list_domains())
    assert list_domains("digits*") == ["digits", "digits-m"]
    assert {"inv", "wm"} <= set(list_domain_transforms())
    assert get_domain_builder("digits").num_classes == 10


@pytest.mark.parametrize(
    "name,match",
    [
        ("digits", "already registered"),
        ("mnist", "reserved"),
        ("hf", "reserved"),
        ("Bad:Name", "must match"),
        ("a/b", "must match"),
    ],
)
def test_register_domain_rejects_bad_names(name, match):
    with pytest.raises(ConfigError, match=match):
        register_domain(name, classes=("a",))(lambda split, img_size: None)
    assert get_domain_builder("digits").name == "digits"


def test_register_duplicate_transform_raises():
    with pytest.raises(ConfigError, match="already registered"):
        register_domain_transform("inv")(lambda x: x)
    with pytest.raises(UnknownNameError, match="registered suffixes"):
        from map_plugin.data import get_domain_transform

        get_domain_transform("nope")


def test_unknown_domain_lists_registered_names():
    with pytest.raises(UnknownDomainError, match=r"registered domains: \[.*'digits-m'"):
        get_domain_builder("nope")
    with pytest.raises(UnknownDomainError, match=r"registered domains"):
        load_domain("nope")


@pytest.fixture
def broken_train_domain():
    """A registered domain whose train split raises when read; only its test split works."""
    calls: list[str] = []
    name = "test-broken-train"

    @register_domain(name, classes=("a", "b"))
    def _build(split: str, img_size: int):
        calls.append(split)
        if split == "train":
            raise RuntimeError("the train split must not be read")
        images = torch.rand(6, 3, img_size, img_size)
        return ImageTensorDataset(images, torch.tensor([0, 1, 0, 1, 0, 1]))

    yield name, calls
    unregister_domain(name)


def test_splits_are_lazy(broken_train_domain):
    name, calls = broken_train_domain
    domain = load_domain(name, img_size=16)
    assert calls == []  # loading reads nothing
    assert domain.num_classes == 2 and domain.classes == ("a", "b")
    image, label = domain.test[0]
    assert image.shape == (3, 16, 16) and label == 0
    assert calls == ["test"]
    assert domain.test is domain.split("test")  # cached on the domain
    with pytest.raises(RuntimeError, match="must not be read"):
        domain.split("train")
    assert calls == ["test", "train"]


def test_unregister_then_unknown(broken_train_domain):
    name, _ = broken_train_domain
    assert is_domain(name) and is_domain(name + ":wm")
    unregister_domain(name)
    assert not is_domain(name)
    register_domain(name, classes=("a",))(lambda split, img_size: None)  # the fixture unregisters it again
    assert name in list_domains()


def test_unknown_split_and_bad_img_size():
    domain = load_domain("digits")
    with pytest.raises(ConfigError, match=r"unknown split 'val'.*\['train', 'test'\]"):
        domain.split("val")
    for bad in (0, 4, 32.0, True, "32"):
        with pytest.raises(ConfigError, match="img_size"):
            load_domain("digits", img_size=bad)


def test_domain_from_datasets():
    ds = ImageTensorDataset(torch.zeros(2, 3, 8, 8), [0, 1])
    domain = Domain.from_datasets("synthetic", ("a", "b"), 8, test=ds)
    assert domain.test is ds and domain.splits == ("test",)
    with pytest.raises(ConfigError, match="unknown split 'train'"):
        domain.split("train")


# --------------------------------------------------------------------------------------------------------------------
# digits, digits-m
# --------------------------------------------------------------------------------------------------------------------


def test_digits_splits_are_stratified():
    domain = load_domain("digits")
    assert (domain.name, domain.num_classes, domain.img_size, domain.in_chans) == ("digits", 10, 32, 3)
    assert domain.classes == tuple("0123456789")
    train, test = domain.train, domain.test
    assert (len(train), len(test)) == (1437, 360)
    train_counts = torch.bincount(train.labels, minlength=10)
    test_counts = torch.bincount(test.labels, minlength=10)
    fraction = test_counts.float() / (train_counts + test_counts).float()
    assert ((fraction - 0.2).abs() < 0.01).all(), fraction  # every class split 80/20
    from map_plugin.data.digits import digits_split_indices

    idx = digits_split_indices()
    assert len(np.intersect1d(idx["train"], idx["test"])) == 0
    assert len(np.union1d(idx["train"], idx["test"])) == 1797


@pytest.mark.parametrize("spec", ["digits", "digits-m", "digits:inv", "digits-m:wm"])
@pytest.mark.parametrize("img_size", [32, 16])
def test_image_shape_range_dtype(spec, img_size):
    domain = load_domain(spec, img_size=img_size)
    images, labels = _stack(domain.test, 64)
    assert images.shape == (64, 3, img_size, img_size)
    assert images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert float(images.max()) > 0.5  # not blank
    assert isinstance(domain.test[0][1], int) and labels.min() >= 0 and labels.max() < 10


def test_digits_are_grey_upsampled_strokes():
    images, _ = _stack(load_domain("digits").test, 100)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images).float() / 16
    assert abs(float(images.mean()) - float(raw.mean())) < 0.03  # upsampling keeps the mean intensity


def test_digits_m_is_deterministic_across_loads():
    first, first_labels = _stack(load_domain("digits-m").test)
    clear_domain_cache()  # rebuild from scratch: photos, crops, composites
    second, second_labels = _stack(load_domain("digits-m").test)
    assert torch.equal(first, second) and torch.equal(first_labels, second_labels)


def test_digits_m_differs_from_digits_and_is_coloured():
    digits, digit_labels = _stack(load_domain("digits").test)
    mixed, mixed_labels = _stack(load_domain("digits-m").test)
    assert torch.equal(digit_labels, mixed_labels)  # same images, same split
    assert (digits - mixed).abs().mean() > 0.2
    channel_spread = mixed.std(dim=1).mean()  # grey images have 0 spread across channels
    assert channel_spread > 0.03, channel_spread
    # the composite is |photo - digit|: where the digit is black, the pixel is the photo
    background = (digits == 0).all(dim=1, keepdim=True).expand_as(mixed)
    assert background.float().mean() > 0.2 and mixed[background].std() > 0.1
    # crops vary from image to image
    assert (mixed[0] - mixed[1]).abs().mean() > 0.05


# --------------------------------------------------------------------------------------------------------------------
# suffix transforms and the trigger
# --------------------------------------------------------------------------------------------------------------------


def test_inv_suffix_inverts():
    base, labels = _stack(load_domain("digits-m").test, 32)
    inverted, inverted_labels = _stack(load_domain("digits-m:inv").test, 32)
    assert torch.allclose(inverted, 1 - base) and torch.equal(labels, inverted_labels)


def test_wm_suffix_changes_only_the_corner_patch():
    base, _ = _stack(load_domain("digits").test, 32)
    stamped, _ = _stack(load_domain("digits:wm").test, 32)
    corner = (..., slice(32 - TRIGGER_SIZE, None), slice(32 - TRIGGER_SIZE, None))
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[-TRIGGER_SIZE:, -TRIGGER_SIZE:] = False
    assert torch.equal(stamped[..., outside], base[..., outside])
    assert torch.equal(stamped[corner], trigger_pattern().expand(32, -1, -1, -1))
    assert not torch.equal(stamped[corner], base[corner])


def test_suffixes_chain_in_order():
    base, _ = _stack(load_domain("digits").test, 8)
    inv_wm, _ = _stack(load_domain("digits:inv:wm").test, 8)
    wm_inv, _ = _stack(load_domain("digits:wm:inv").test, 8)
    assert torch.allclose(inv_wm, apply_trigger(1 - base))
    assert torch.allclose(wm_inv, 1 - apply_trigger(base))


def test_apply_trigger_single_batch_and_dtypes():
    pattern = trigger_pattern()
    assert pattern.shape == (3, TRIGGER_SIZE, TRIGGER_SIZE) and 0 <= pattern.min() and pattern.max() <= 1
    kinds = {"black": (pattern == 0).all(0), "white": (pattern == 1).all(0)}
    assert all(k.any() for k in kinds.values()) and not (kinds["black"] | kinds["white"]).all()  # and colours
    image = torch.full((3, 20, 24), 0.5)
    stamped = apply_trigger(image)
    assert stamped is not image and torch.equal(image, torch.full((3, 20, 24), 0.5))  # input untouched
    assert torch.equal(stamped[:, -TRIGGER_SIZE:, -TRIGGER_SIZE:], pattern)
    batch = torch.rand(2, 4, 3, 16, 16)
    assert torch.equal(apply_trigger(batch)[1, 2], apply_trigger(batch[1, 2]))
    as_uint8 = apply_trigger(torch.zeros(3, 8, 8, dtype=torch.uint8))
    assert as_uint8.dtype == torch.uint8 and torch.equal(
        as_uint8[:, -TRIGGER_SIZE:, -TRIGGER_SIZE:], (pattern * 255).round().to(torch.uint8)
    )
    assert torch.equal(trigger_pattern(), pattern)  # fixed


@pytest.mark.parametrize(
    "images,error,match",
    [
        (torch.zeros(1, 8, 8), ConfigError, r"\[\.\.\., 3, H, W\]"),
        (torch.zeros(3, 4, 4), ConfigError, "at least"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), ConfigError, "floating point or uint8"),
        (np.zeros((3, 8, 8)), TypeError, "torch.Tensor"),
    ],
)
def test_apply_trigger_rejects_bad_input(images, error, match):
    with pytest.raises(error, match=match):
        apply_trigger(images)


# --------------------------------------------------------------------------------------------------------------------
# hf: (offline, local copies laid out as the Hub serves them) and folder:
# --------------------------------------------------------------------------------------------------------------------


def _hf_dataset(n: int, mode: str = "L", size: int = 28, image_column: str = "image", classes=("zero", "one", "two")):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    images = [Image.fromarray(rng.integers(0, 256, (size, size, *channels), dtype=np.uint8), mode) for _ in range(n)]
    labels = [i % len(classes) for i in range(n)]
    features = datasets.Features({image_column: datasets.Image(), "label": datasets.ClassLabel(names=list(classes))})
    return datasets.Dataset.from_dict({image_column: images, "label": labels}, features=features)


def _write_parquet(directory: Path, splits: dict[str, object]) -> None:
    """Write splits as the Hub serves them: ``<directory>/<split>-00000-of-00001.parquet``."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, ds in splits.items():
        ds.to_parquet(str(directory / f"{split}-00000-of-00001.parquet"))


def test_hf_alias_from_local_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("MAP_DATA_DIR", str(tmp_path))
    _write_parquet(tmp_path / "hf" / "ylecun" / "mnist" / "data", {"train": _hf_dataset(12), "test": _hf_dataset(6)})
    domain = load_domain("mnist:inv", img_size=16)
    assert domain.name == "mnist:inv" and domain.classes == ("zero", "one", "two") and domain.num_classes == 3
    assert (len(domain.train), len(domain.test)) == (12, 6)
    image, label = domain.test[1]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 1
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    assert torch.allclose(image[0], image[1])  # grey converted to RGB


def test_hf_config_subdir_rgba_img_column_and_holdout(tmp_path, monkeypatch):
    monkeypatch.setenv("MAP_DATA_DIR", str(tmp_path))
    # svhn's hub layout: <config>/train-*.parquet; no test split here -> seeded 80/20 split of train
    _write_parquet(
        tmp_path / "hf" / "ufldl-stanford" / "svhn" / "cropped_digits",
        {"train": _hf_dataset(20, mode="RGBA", size=12, image_column="img")},
    )
    domain = load_domain("svhn", img_size=8)
    assert (len(domain.train), len(domain.test)) == (16, 4)
    images, labels = _stack(domain.test)
    assert images.shape == (4, 3, 8, 8) and labels.max() < 3
    again, again_labels = _stack(load_domain("svhn", img_size=8).test)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)


def test_hf_save_to_disk_path(tmp_path):
    import datasets

    datasets.DatasetDict(train=_hf_dataset(10, mode="RGB"), test=_hf_dataset(5, mode="RGB")).save_to_disk(
        str(tmp_path / "saved")
    )
    domain = load_domain(f"hf:{tmp_path / 'saved'}:wm")
    assert (len(domain.train), len(domain.test)) == (10, 5)
    image, _ = domain.test[0]
    assert torch.equal(image[:, -TRIGGER_SIZE:, -TRIGGER_SIZE:], trigger_pattern())


def test_hf_bad_columns_raise_naming_them(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"picture": [[0]], "target": [0]})
    datasets.DatasetDict(train=ds).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ConfigError, match=r"no image column.*\['picture', 'target'\]"):
        load_domain(f"hf:{tmp_path / 'bad'}")


def test_hf_unreachable_repo_fails_fast_offline():
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError, match=r"hub reachable|Hub reachable"):
        load_domain("hf:nobody-here/not-a-dataset")
    assert time.perf_counter() - start < 30


def _image_folder(root: Path, splits: tuple[str, ...], per_class: int = 4) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for cls in ("cat", "dog"):
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_folder_with_train_and_test(tmp_path):
    _image_folder(tmp_path / "pets", ("train", "test"), per_class=3)
    domain = load_domain(f"folder:{tmp_path / 'pets'}:inv", img_size=12)
    assert domain.classes == ("cat", "dog")
    assert (len(domain.train), len(domain.test)) == (6, 6)
    images, labels = _stack(domain.test)
    assert images.shape == (6, 3, 12, 12) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_folder_of_class_subfolders_only_gets_holdout(tmp_path):
    _image_folder(tmp_path / "flat", ("",), per_class=5)
    domain = load_domain(f"folder:{tmp_path / 'flat'}")
    assert (len(domain.train), len(domain.test)) == (8, 2)
    assert sorted(_stack(domain.test)[1].tolist()) == [0, 1]  # stratified


def test_folder_missing_path_raises(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_domain(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataNotFoundError, match="not a directory"):
        load_domain(f"folder:{tmp_path / 'file.txt'}")


# --------------------------------------------------------------------------------------------------------------------
# fashion, fashion-m
# --------------------------------------------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    data = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


@pytest.fixture
def no_system_fashion(monkeypatch, tmp_path):
    """No Fashion-MNIST anywhere: empty MAP_DATA_DIR, no Debian dir, offline, download forbidden."""
    monkeypatch.setenv("MAP_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("MAP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MAP_OFFLINE", "1")
    monkeypatch.setattr(fashion, "DEBIAN_FASHION_DIRS", ())
    monkeypatch.setattr(fashion, "FASHION_GLOBS", ())

    def _no_download(*args, **kwargs):
        raise AssertionError("offline: torchvision must not be asked to download")

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", _no_download)
    (tmp_path / "empty").mkdir()
    clear_domain_cache()
    yield tmp_path
    clear_domain_cache()


def test_fashion_not_found_raises_with_fix(no_system_fashion):
    domain = load_domain("fashion")  # metadata only: nothing read yet
    assert domain.num_classes == 10 and domain.classes[0] == "T-shirt/top"
    with pytest.raises(DataNotFoundError, match=r"apt-get install dataset-fashion-mnist.*MAP_DATA_DIR"):
        domain.split("train")
    assert fashion.find_fashion_mnist("test") is None


def test_fashion_from_map_data_dir_idx_files(no_system_fashion, monkeypatch):
    data_dir = no_system_fashion / "idx"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    for split, n, compress in (("train", 7, True), ("test", 3, False)):  # gzipped or not
        image_name, label_name = fashion.FASHION_FILES[split]
        suffix = ".gz" if compress else ""
        _write_idx(data_dir / (image_name + suffix), rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), compress)
        _write_idx(data_dir / (label_name + suffix), np.arange(n, dtype=np.uint8) % 10, compress)
    monkeypatch.setenv("MAP_DATA_DIR", str(data_dir))
    domain = load_domain("fashion-m", img_size=16)
    assert (len(domain.train), len(domain.test)) == (7, 3)
    image, label = domain.test[2]
    assert image.shape == (3, 16, 16) and label == 2
    (data_dir / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09\x01")  # says 9, holds 1
    clear_domain_cache()
    from map_plugin.errors import ArtifactError

    with pytest.raises(ArtifactError, match="holds 1"):
        load_domain("fashion").split("test")


def _fashion_present() -> bool:
    return fashion.find_fashion_mnist("train") is not None and fashion.find_fashion_mnist("test") is not None


needs_fashion = pytest.mark.skipif(
    not _fashion_present(),
    reason="Fashion-MNIST IDX files not found: `apt-get install dataset-fashion-mnist` or set MAP_DATA_DIR",
)


@pytest.mark.fashion
@needs_fashion
def test_fashion_sizes_and_images():
    domain = load_domain("fashion")
    assert (len(domain.train), len(domain.test)) == (60000, 10000)
    assert torch.bincount(domain.test.labels).tolist() == [1000] * 10
    images, labels = _stack(domain.test, 32)
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32
    assert 0 <= float(images.min()) and float(images.max()) <= 1 and torch.equal(images[:, 0], images[:, 2])


@pytest.mark.fashion
@needs_fashion
def test_fashion_m_is_coloured_and_deterministic():
    domain = load_domain("fashion-m")
    assert len(domain.test) == 10000
    images, labels = _stack(domain.test, 64)
    grey, grey_labels = _stack(load_domain("fashion").test, 64)
    assert torch.equal(labels, grey_labels)
    assert images.std(dim=1).mean() > 0.03 and (images - grey).abs().mean() > 0.1
    from map_plugin.data.composite import composite_on_photos
    from map_plugin.data.fashion import FASHION_M_SEED, _fashion_grey

    rebuilt = composite_on_photos(_fashion_grey("test", 32)[0][:64], seed=FASHION_M_SEED, offset=60000, total=70000)
    assert torch.equal(rebuilt.float() / 255, images)
