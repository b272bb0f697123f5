"""Folders hold more than data: litter and hidden files are skipped, and the use is told."""

import pytest
from media_files import write_litter
from PIL import Image

from dvkit.io.clips import VIDEO_EXTENSIONS
from dvkit.io.folders import DataError, collect_files, is_litter
from dvkit.io.images import IMAGE_EXTENSIONS


def test_litter_beside_images_is_skipped_and_told(tmp_path) -> None:
    folder = tmp_path / "cat"
    folder.mkdir()
    for index in range(2):
        Image.new("RGB", (8, 8)).save(folder / f"{index}.png")
    write_litter(folder)
    (folder / ".hidden.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("x")
    (folder / "raw").mkdir()
    found = collect_files([folder], IMAGE_EXTENSIONS, "images")
    assert [p.name for p in found.paths] == ["0.png", "1.png"]
    assert found.skipped == [".DS_Store", "._0.png", ".hidden.png", "Thumbs.db", "desktop.ini",
                             "notes.txt", "raw/"]  # fmt: skip
    assert found.describe("image") == (
        f"using 2 images from {folder} (7 skipped: .DS_Store, ._0.png, .hidden.png, "
        "Thumbs.db, desktop.ini, …)"
    )


def test_litter_named_explicitly_is_skipped_too(tmp_path) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    write_litter(tmp_path)
    found = collect_files([image, tmp_path / "._0.png", tmp_path / "Thumbs.db"],
                          IMAGE_EXTENSIONS, "images")  # fmt: skip
    assert found.paths == [image] and found.skipped == ["._0.png", "Thumbs.db"]
    assert found.describe("image").startswith("using 1 image from ")
    with pytest.raises(DataError, match="no images given"):
        collect_files([tmp_path / ".DS_Store"], IMAGE_EXTENSIONS, "images")


def test_a_folder_of_only_litter_has_nothing(tmp_path) -> None:
    write_litter(tmp_path)
    with pytest.raises(DataError, match="no videos found in"):
        collect_files([tmp_path], VIDEO_EXTENSIONS, "videos", frame_extensions=IMAGE_EXTENSIONS)


def test_frame_folders_count_once_and_report_their_litter(tmp_path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (8, 8)).save(frames / "000.png")
    write_litter(frames)
    found = collect_files([frames], VIDEO_EXTENSIONS, "videos", frame_extensions=IMAGE_EXTENSIONS)
    assert found.paths == [frames] and "._0.png" in found.skipped
    assert found.describe("video").startswith(f"using 1 video from {frames} (4 skipped")


@pytest.mark.parametrize(
    ("name", "litter"),
    [("._IMG_0001.JPG", True), (".DS_Store", True), ("THUMBS.DB", True), ("Desktop.ini", True),
     (".git", True), ("cat.png", False), ("thumbs.png", False), ("_0.png", False)],
)  # fmt: skip
def test_what_counts_as_litter(tmp_path, name, litter) -> None:
    assert is_litter(tmp_path / name) is litter
