"""ParallelBench-style task generators and their scorers, against hand-checked cases."""

import pytest

from crossedge.core.errors import CrossedgeError
from crossedge.specdec.parallel import tasks as T

LINE = ["Ann Lee", "Bo Park", "Cy Moss"]


def ex(task, **reference):
    return T.TaskExample(task, "prompt", "answer", reference)


@pytest.mark.parametrize("name", list(T.TASKS))
def test_every_reference_answer_is_valid_and_generation_is_seeded(name):
    examples = T.make_examples([name], 20, seed=3)
    assert examples == T.make_examples([name], 20, seed=3)
    assert examples != T.make_examples([name], 20, seed=4)
    for e in examples:
        assert e.task == name and e.prompt and e.answer
        assert T.score(e, e.answer) == 1.0, (e.prompt, e.answer)


def test_waiting_lines_have_three_to_six_people_with_distinct_last_names():
    for e in T.make_examples(["copy"], 60, seed=0):
        people = T.parse_line(e.answer)
        assert 3 <= len(people) <= 6
        assert len({p.split()[1] for p in people}) == len(people)


def test_exact_line_tasks_compare_item_by_item():
    e = ex("reverse", expected=LINE[::-1])
    assert T.score(e, "Cy Moss , Bo Park , Ann Lee") == 1.0
    assert T.score(e, "Cy  Moss ,Bo Park,  Ann Lee ") == 1.0  # spacing does not matter
    assert T.score(e, "Cy Moss , Ann Lee , Bo Park") == 0.0
    assert T.score(e, "Cy Moss , Bo Park") == 0.0


def test_sort_is_by_last_name():
    e = T.make_examples(["sort"], 1, seed=1)[0]
    lasts = [p.split()[1] for p in T.parse_line(e.answer)]
    assert lasts == sorted(lasts)


def test_shuffle_needs_the_same_people_in_another_order():
    e = ex("shuffle", line=LINE)
    assert T.score(e, "Bo Park , Ann Lee , Cy Moss") == 1.0
    assert T.score(e, "Ann Lee , Bo Park , Cy Moss") == 0.0  # a copy is no shuffle
    assert T.score(e, "Bo Park , Bo Park , Cy Moss") == 0.0  # not the same multiset
    assert T.score(e, "Bo Park , Ann Lee") == 0.0


def test_random_insert_keeps_the_others_in_order():
    e = ex("insert_random", line=LINE, new="Di Ray")
    assert T.score(e, "Di Ray , Ann Lee , Bo Park , Cy Moss") == 1.0
    assert T.score(e, "Ann Lee , Bo Park , Cy Moss , Di Ray") == 1.0
    assert T.score(e, "Bo Park , Di Ray , Ann Lee , Cy Moss") == 0.0
    assert T.score(e, "Ann Lee , Bo Park , Cy Moss") == 0.0
    assert T.score(e, "Di Ray , Di Ray , Bo Park , Cy Moss") == 0.0


def test_random_remove_drops_exactly_one():
    e = ex("remove_random", line=LINE)
    assert T.score(e, "Ann Lee , Cy Moss") == 1.0
    assert T.score(e, "Cy Moss , Ann Lee") == 0.0
    assert T.score(e, "Ann Lee") == 0.0


def test_random_replace_changes_one_position_to_the_newcomer():
    e = ex("replace_random", line=LINE, new="Di Ray")
    assert T.score(e, "Ann Lee , Di Ray , Cy Moss") == 1.0
    assert T.score(e, "Ann Lee , Bo Park , Di Ray") == 1.0
    assert T.score(e, "Ann Lee , Bo Park , Cy Moss") == 0.0
    assert T.score(e, "Di Ray , Di Ray , Cy Moss") == 0.0
    assert T.score(e, "Ann Lee , Eve Orr , Cy Moss") == 0.0


def test_latin_square_checks_rows_and_columns():
    e = ex("latin_square", symbols=["A", "B", "C", "D"])
    assert T.score(e, "A B C D ; B C D A ; C D A B ; D A B C") == 1.0
    assert T.score(e, "A B C D ; B C D A ; C D A B ; A B C D") == 0.0  # column repeats
    assert T.score(e, "A B C D ; B C D A ; C D A B") == 0.0
    assert T.score(e, "A B C D ; B C D A ; C D A B ; D A B") == 0.0


def test_sudoku_checks_boxes_and_the_given_digits():
    puzzle = [list("1234"), list("3412"), list("2143"), list("4300")]
    e = ex("sudoku", puzzle=puzzle)
    assert T.score(e, "1 2 3 4 ; 3 4 1 2 ; 2 1 4 3 ; 4 3 2 1") == 1.0
    # A Latin square whose 2x2 boxes repeat digits is no sudoku.
    e_free = ex("sudoku", puzzle=[["0"] * 4 for _ in range(4)])
    assert T.score(e_free, "1 2 3 4 ; 2 3 4 1 ; 3 4 1 2 ; 4 1 2 3") == 0.0
    # A valid sudoku that ignores a given digit fails.
    other = ex("sudoku", puzzle=[list("2000"), ["0"] * 4, ["0"] * 4, ["0"] * 4])
    assert T.score(other, "1 2 3 4 ; 3 4 1 2 ; 2 1 4 3 ; 4 3 2 1") == 0.0


def test_sudoku_puzzles_have_four_blanks_and_one_solution():
    for e in T.make_examples(["sudoku"], 10, seed=2):
        blanks = sum(cell == "0" for row in e.reference["puzzle"] for cell in row)
        assert blanks == 4
        grid = [[None if c == "0" else int(c) for c in row] for row in e.reference["puzzle"]]
        assert T._solutions(grid) == 1


def test_words_to_sentence_counts_the_required_words():
    e = ex("words_to_sentence", words=["license", "copy", "terms"])
    assert T.score(e, "you may copy the license under these terms") == 1.0
    assert T.score(e, "you may copy the license") == pytest.approx(2 / 3)
    assert T.score(e, "nothing here") == 0.0


def test_held_out_sentences_are_never_training_sentences():
    train = {e.answer for e in T.make_examples(["words_to_sentence"], 200, seed=0)}
    test = {e.answer for e in T.make_examples(["words_to_sentence"], 50, seed=0, split="test")}
    assert test and not (train & test)


def test_task_names_and_groups_resolve():
    assert T.resolve_tasks("parallelbench") == list(T.TASKS)
    assert T.resolve_tasks("copy,puzzles,copy") == ["copy", "latin_square", "sudoku"]
    with pytest.raises(CrossedgeError, match="unknown parallel-decoding task 'nope'"):
        T.resolve_tasks("copy,nope")
    with pytest.raises(CrossedgeError, match="no tasks"):
        T.resolve_tasks(" , ")
