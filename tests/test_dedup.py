"""Tests for pndecomp.dedup: exact and near-duplicate groups."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pndecomp.dedup import DuplicateGroups, minhash_signature, near_duplicate_groups

MIT = """Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions: The above copyright notice and this
permission notice shall be included in all copies or substantial portions of the Software.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT
OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE."""
UNRELATED = """Gardening notes. Tomatoes want full sun, deep watering twice a week and a stake before the
first truss sets fruit. Basil goes between the rows to keep aphids away; marigolds along the edge
do the same for whitefly. Pinch out side shoots on cordon varieties, but leave bush types alone.
Feed with a high potash liquid once flowers appear and stop watering from above when blight is
about. Harvest when the fruit colours fully and give away what the family cannot eat in time."""


def test_near_duplicate_texts_share_a_group_and_others_do_not():
    ids = ["c", "a", "b", "d"]
    texts = [
        "MIT License\nCopyright (c) 2019 Carol\n\n" + MIT,
        "MIT License\nCopyright (c) 2021 Alice\n\n" + MIT,
        UNRELATED,
        MIT + "\n\n" + UNRELATED,
    ]
    groups = near_duplicate_groups(ids, texts)
    assert groups[0] == groups[1] == "a"  # named by the smallest id
    assert groups[2] == "b"
    assert groups[3] == "d"  # half one, half the other: near neither


def test_exact_groups_ignore_whitespace_and_count_duplicates():
    deduplicated = DuplicateGroups("exact")
    offered = [("a", "one two  three"), ("b", "four"), ("c", "one\ntwo three\n"), ("d", " one two three"),
               ("e", "four"), ("f", "One two three")]
    assert [deduplicated.group_of(group, text) for group, text in offered] == ["a", "b", "a", "a", "b", "f"]
    assert deduplicated.counts() == {"mode": "exact", "groups": 2, "documents": 5}


def test_exact_leaves_near_duplicates_apart_and_near_joins_them():
    licences = [("carol", "MIT License\nCopyright (c) 2019 Carol\n\n" + MIT),
                ("alice", "MIT License\nCopyright (c) 2021 Alice\n\n" + MIT)]
    for mode, expected in (("exact", ["carol", "alice"]), ("near", ["carol", "carol"]), ("none", ["carol", "alice"])):
        deduplicated = DuplicateGroups(mode)
        assert [deduplicated.group_of(group, text) for group, text in licences] == expected, mode


def test_groups_shared_by_several_founders_count_their_documents():
    """Two texts founded under one group name (a group field) still count as two duplicate groups."""
    deduplicated = DuplicateGroups("exact")
    for text in ("x", "y", "x", "y", "y"):
        assert deduplicated.group_of("repo", text) == "repo"
    assert deduplicated.counts() == {"mode": "exact", "groups": 2, "documents": 5}


def test_unknown_mode_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"'fuzzy'.*\['exact', 'near', 'none'\]"):
        DuplicateGroups("fuzzy")


def test_signatures_do_not_depend_on_the_process_hash_seed():
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); from test_dedup import MIT; "
            "from pndecomp.dedup import minhash_signature; print(minhash_signature(MIT).hashvalues.tolist())")
    outputs = {
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("0", "12345")
    }
    assert outputs == {str(minhash_signature(MIT).hashvalues.tolist()) + "\n"}
