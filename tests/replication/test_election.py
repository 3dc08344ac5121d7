"""Executor election and fencing, fed with log entries in the order a Raft log would commit them.

Every replica runs its own ElectionBook over the same committed log; these tests check that they decide the same
executor and that fencing keeps a late or foreign state delta out.
"""

from notebookos.replication.election import ALL_YIELD, ElectionBook, VoteNeeded
from notebookos.replication.entries import CellKey, ExecutionRecord, Proposal, Role, Snapshot, Vote

VOTERS = (0, 1, 2)


def proposal(cell: CellKey, replica: int, lead: bool, leads: int = 1) -> Proposal:
    return Proposal(cell, replica, Role.LEAD if lead else Role.YIELD, leads, VOTERS)


def record(cell: CellKey, executor: int) -> ExecutionRecord:
    return ExecutionRecord(cell, executor, 1, "x = 1", {"status": "ok"}, b"")


def feed(books: list[ElectionBook], entries: list) -> list[Vote]:
    """Apply entries to every book in order; votes that books ask for are appended to the log, as replicas do."""
    log = list(entries)
    votes: list[Vote] = []
    i = 0
    while i < len(log):
        entry = log[i]
        for book in books:
            if isinstance(entry, Proposal):
                need = book.on_proposal(entry)
                if isinstance(need, VoteNeeded):
                    vote = Vote(need.cell, book.replica, need.candidate)
                    votes.append(vote)
                    log.append(vote)
            elif isinstance(entry, Vote):
                book.on_vote(entry)
        i += 1
    return votes


def books() -> list[ElectionBook]:
    return [ElectionBook(i) for i in VOTERS]


def test_single_invited_lead_decides_without_a_vote_round():
    cell = CellKey("m1", 0)
    bs = books()
    votes = feed(bs, [proposal(cell, 2, True)])
    assert votes == []
    assert [b.decision(cell) for b in bs] == [2, 2, 2]


def test_single_invited_replica_that_yields_decides_all_yield():
    cell = CellKey("m1", 0)
    bs = books()
    feed(bs, [proposal(cell, 1, False)])
    assert [b.decision(cell) for b in bs] == [ALL_YIELD] * 3


def test_all_yield_in_a_vote_round_is_decided_once_every_voter_proposed():
    cell = CellKey("m1", 0)
    bs = books()
    feed(bs, [proposal(cell, 0, False, leads=3), proposal(cell, 1, False, leads=3)])
    assert bs[0].decision(cell) is None
    feed(bs, [proposal(cell, 2, False, leads=3)])
    assert [b.decision(cell) for b in bs] == [ALL_YIELD] * 3


def test_vote_round_prefers_the_previous_executor():
    bs = books()
    first = CellKey("m1", 0)
    feed(bs, [proposal(first, 1, True)])
    cell = CellKey("m2", 0)
    votes = feed(
        bs, [proposal(cell, 0, True, leads=3), proposal(cell, 2, True, leads=3), proposal(cell, 1, True, leads=3)]
    )
    assert {v.candidate for v in votes} == {1}
    assert [b.decision(cell) for b in bs] == [1, 1, 1]


def test_vote_round_without_previous_executor_takes_first_committed_lead():
    bs = books()
    cell = CellKey("m1", 0)
    feed(bs, [proposal(cell, 2, True, leads=3), proposal(cell, 0, True, leads=3), proposal(cell, 1, False, leads=3)])
    assert [b.decision(cell) for b in bs] == [2, 2, 2]


def test_record_accepted_only_from_the_elected_executor():
    bs = books()
    cell = CellKey("m1", 0)
    feed(bs, [proposal(cell, 1, True)])
    assert not bs[0].accepts(record(cell, 2))
    assert bs[0].accepts(record(cell, 1))
    assert bs[0].committed_record("m1") is not None


def test_late_record_of_a_superseded_attempt_is_fenced_off():
    bs = books()
    first, retry = CellKey("m1", 0), CellKey("m1", 1)
    feed(bs, [proposal(first, 0, True)])
    feed(bs, [proposal(retry, 1, True, leads=2)])  # the front presumed replica 0 dead and retried
    feed(bs, [Proposal(retry, 2, Role.LEAD, 2, (1, 2))])
    assert bs[2].decision(retry) in (1, 2)
    assert not bs[2].accepts(record(first, 0))


def test_late_proposal_of_an_old_attempt_cannot_reopen_it():
    bs = books()
    first, retry = CellKey("m1", 0), CellKey("m1", 1)
    feed(bs, [Proposal(retry, 1, Role.LEAD, 1, (1, 2))])
    feed(bs, [proposal(first, 0, True)])
    assert bs[1].decision(first) is None
    assert bs[1].accepts(record(retry, 1))


def test_record_of_an_earlier_cell_is_fenced_once_a_later_cell_is_decided():
    bs = books()
    a, b = CellKey("a", 0), CellKey("b", 0)
    feed(bs, [proposal(a, 0, True), proposal(b, 1, True)])
    assert not bs[2].accepts(record(a, 0))
    assert bs[2].accepts(record(b, 1))


def solo(cell: CellKey, executor: int, after: CellKey | None) -> ExecutionRecord:
    return ExecutionRecord(cell, executor, 1, "x = 1", {"status": "ok"}, b"", solo=True, after=after)


def elected_and_recorded(book: ElectionBook, cell: CellKey, executor: int) -> None:
    feed([book], [proposal(cell, executor, True)])
    assert book.accepts(record(cell, executor))


def test_only_the_writer_of_the_latest_record_may_run_the_next_cell_without_an_election():
    book = ElectionBook(0)
    assert book.solo_base(1) is None  # a new kernel: the first cell is elected
    a = CellKey("a", 0)
    elected_and_recorded(book, a, 1)
    assert book.solo_base(1) == a
    assert book.solo_base(2) is None
    feed([book], [proposal(CellKey("b", 0), 1, False)])  # decided since (all yield): elect again
    assert book.solo_base(1) is None


def test_solo_records_chain_on_every_replica_and_move_the_executor():
    bs = books()
    a, b, c = CellKey("a", 0), CellKey("b", 0), CellKey("c", 0)
    for book in bs:
        elected_and_recorded(book, a, 1)
        assert book.accepts(solo(b, 1, a))
        assert book.accepts(solo(c, 1, b))
    assert [book.decision(c) for book in bs] == [1, 1, 1]
    assert [book.solo_base(1) for book in bs] == [c, c, c]
    assert bs[0].committed_record("b") is not None


def test_solo_record_on_a_stale_base_is_fenced_off():
    book = ElectionBook(0)
    a, b = CellKey("a", 0), CellKey("b", 0)
    elected_and_recorded(book, a, 1)
    feed([book], [proposal(b, 2, True)])
    assert book.accepts(record(b, 2))
    # Replica 1, cut off since cell a, ran a cell on top of a: b's record came first in the log.
    assert not book.accepts(solo(CellKey("c", 0), 1, a))
    assert book.solo_base(2) == b


def test_solo_record_loses_to_a_failover_attempt_decided_first():
    book = ElectionBook(0)
    a, c0, c1 = CellKey("a", 0), CellKey("c", 0), CellKey("c", 1)
    elected_and_recorded(book, a, 1)
    # The front presumed replica 1 lost while it ran c alone, and re-sent c to the survivors, who elected 2.
    feed([book], [Proposal(c1, 2, Role.LEAD, 2, (0, 2)), Proposal(c1, 0, Role.LEAD, 2, (0, 2))])
    assert not book.accepts(solo(c0, 1, a))
    assert book.accepts(record(c1, book.decision(c1) or 0))


def test_solo_record_committed_before_the_failover_attempt_answers_it_from_the_log():
    book = ElectionBook(0)
    a, c0, c1 = CellKey("a", 0), CellKey("c", 0), CellKey("c", 1)
    elected_and_recorded(book, a, 1)
    assert book.accepts(solo(c0, 1, a))
    feed([book], [Proposal(c1, 2, Role.LEAD, 2, (0, 2)), Proposal(c1, 0, Role.LEAD, 2, (0, 2))])
    assert book.committed_record("c") == solo(c0, 1, a)
    assert not book.accepts(record(c1, book.decision(c1) or 0))  # the re-sent attempt is answered, not recorded


def test_solo_record_chains_on_a_snapshot():
    a = CellKey("a", 0)
    snapshot = Snapshot(a, 1, 3, {"status": "ok"}, b"")
    book = ElectionBook.after_snapshot(0, snapshot)
    assert book.solo_base(1) == a
    assert book.accepts(solo(CellKey("b", 0), 1, a))
