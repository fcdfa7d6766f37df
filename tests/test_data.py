"""Datasets from folders and `datasets`: class names, deduplication, seeded stratified splits."""

from __future__ import annotations

import shutil

import pytest

from catdog_model.data import Example, load_folder, load_folders, load_hf_dataset, normalize_label, split_examples
from catdog_model.images import content_hash
from tests.conftest import PHOTOS_DIR, random_jpeg, requires_photos


def make_examples(count_per_label: int) -> list[Example]:
    examples = []
    for index, label in enumerate(["cat"] * count_per_label + ["dog"] * count_per_label):
        data = random_jpeg(index)
        examples.append(Example(content_hash(data), label, f"{label}/{index}.jpg", data))
    return examples


def test_class_folder_names_and_nested_folders(tmp_path):
    (tmp_path / "Cat" / "indoor").mkdir(parents=True)
    (tmp_path / "dogs").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "Cat" / "indoor" / "a.jpg").write_bytes(random_jpeg(1))
    (tmp_path / "Cat" / "b.PNG").write_bytes(random_jpeg(2))
    (tmp_path / "dogs" / "c.jpeg").write_bytes(random_jpeg(3))
    (tmp_path / "dogs" / "readme.txt").write_text("not an image")
    (tmp_path / "notes" / "d.jpg").write_bytes(random_jpeg(4))
    dataset = load_folder(tmp_path)
    assert sorted((example.source, example.label) for example in dataset.examples) == [
        ("Cat/b.PNG", "cat"), ("Cat/indoor/a.jpg", "cat"), ("dogs/c.jpeg", "dog")]


def test_duplicates_by_content_are_dropped_and_reported(tmp_path):
    for folder in ("cats", "dogs"):
        (tmp_path / folder).mkdir()
    (tmp_path / "cats" / "one.jpg").write_bytes(random_jpeg(1))
    (tmp_path / "cats" / "one-again.jpg").write_bytes(random_jpeg(1))
    (tmp_path / "dogs" / "two.jpg").write_bytes(random_jpeg(2))
    dataset = load_folder(tmp_path)
    assert len(dataset.examples) == 2
    assert dataset.duplicates == [("cats/one.jpg", "cats/one-again.jpg")]


def test_several_folders_report_the_duplicates_within_each_and_across_them(tmp_path):
    for root in ("first", "second"):
        for folder in ("cats", "dogs"):
            (tmp_path / root / folder).mkdir(parents=True)
    (tmp_path / "first" / "cats" / "one.jpg").write_bytes(random_jpeg(1))
    (tmp_path / "first" / "cats" / "one-again.jpg").write_bytes(random_jpeg(1))
    (tmp_path / "second" / "dogs" / "two.jpg").write_bytes(random_jpeg(2))
    (tmp_path / "second" / "dogs" / "two-again.jpg").write_bytes(random_jpeg(2))
    (tmp_path / "second" / "cats" / "one-elsewhere.jpg").write_bytes(random_jpeg(1))
    dataset = load_folders([tmp_path / "first", tmp_path / "second"])
    assert sorted(example.label for example in dataset.examples) == ["cat", "dog"]
    assert len(dataset.duplicates) == 3  # one in each folder, one across them


def test_folder_without_classes_is_a_clear_error(tmp_path):
    (tmp_path / "birds").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        load_folder(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        load_folder(tmp_path / "absent")


def test_unknown_class_name_is_rejected():
    assert normalize_label(" Dogs ") == "dog"
    with pytest.raises(ValueError, match="Unknown class 'horse'"):
        normalize_label("horse")


def test_split_is_stratified_disjoint_and_seeded():
    examples = make_examples(50)
    splits = split_examples(examples, seed=3, validation_fraction=0.1, test_fraction=0.2)
    assert splits.sizes() == {"train": 70, "validation": 10, "test": 20}
    for part, size in ((splits.test, 10), (splits.validation, 5)):
        assert sum(example.label == "cat" for example in part) == size
    hashes = [{example.sha256 for example in part} for part in (splits.train, splits.validation, splits.test)]
    assert set.union(*hashes) == {example.sha256 for example in examples}
    assert sum(map(len, hashes)) == len(examples)
    again = split_examples(list(reversed(examples)), seed=3)
    assert {example.sha256 for example in again.test} == hashes[2]
    other_seed = split_examples(examples, seed=4)
    assert {example.sha256 for example in other_seed.test} != hashes[2]


def test_adding_images_moves_few_existing_ones_between_splits():
    examples = make_examples(100)
    before = split_examples(examples[:90] + examples[100:190], seed=0)
    after = split_examples(examples, seed=0)
    test_before = {example.sha256 for example in before.test}
    test_after = {example.sha256 for example in after.test}
    assert len(test_before - test_after) <= 4  # at most a couple of images per class cross a split boundary


@requires_photos
def test_the_shared_photos_hold_one_duplicate():
    dataset = load_folder(PHOTOS_DIR)
    assert len(dataset.duplicates) == 1
    assert len(dataset.examples) == 2499
    assert sum(dataset.counts().values()) == 2499


def test_datasets_imagefolder_gives_the_same_examples_as_the_folder(tmp_path):
    for folder, seeds in (("cats", (1, 2, 3)), ("dogs", (4, 5))):
        (tmp_path / folder).mkdir()
        for seed in seeds:
            (tmp_path / folder / f"{seed}.jpg").write_bytes(random_jpeg(seed))
    shutil.copy(tmp_path / "cats" / "1.jpg", tmp_path / "cats" / "copy.jpg")
    from_folder = load_folder(tmp_path)
    from_datasets = load_hf_dataset(str(tmp_path))
    assert from_datasets.content_hash() == from_folder.content_hash()
    assert from_datasets.counts() == {"cat": 3, "dog": 2}
    assert len(from_datasets.duplicates) == 1
