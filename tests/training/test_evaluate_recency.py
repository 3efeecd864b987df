"""Recency evaluation (issue 16 part 2): the split by date, the rows against direct computations."""
import json
import random
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest

from commer import ComMer
from commer.merge import merge_all
from training.evaluation import recency
from training.evaluation.recency import article_date, recency_profile, split_by_date
from training.tasks import news
from training.tasks.base import split_of

TOPICS = ["parks budget council", "frog rainforest biologists", "stocks inflation markets", "coffee prices farmers",
          "football league final", "museum art exhibit", "river flood rescue", "school lunch program",
          "rocket launch delay", "bakery bread recipe", "election polls voters", "hospital nurses strike"]
START = date(2019, 1, 1)


def _authors(split: str, count: int) -> list[str]:
    names = (f"Columnist {i}" for i in range(10_000))
    return [a for a in names if split_of(a, news.FRACTIONS) == split][:count]


def _article(author: str, j: int, day: date, description: str | None = None) -> dict:
    tag = author.split()[-1]
    return {"link": f"https://example.org/{tag}/{j}", "headline": f"{TOPICS[j % len(TOPICS)].title()} {tag} {j}",
            "category": "U.S. NEWS", "authors": author, "date": day.isoformat(),
            "short_description": f"{author} on {TOPICS[j % len(TOPICS)]}, story {j}." if description is None
            else description}


def author_articles(author: str, count: int = 12) -> list[dict]:
    """`count` articles 60 days apart (story j on START + 60·j days), in a shuffled order."""
    rows = [_article(author, j, START + timedelta(days=60 * j)) for j in range(count)]
    random.Random(author).shuffle(rows)
    return rows


def write_huffpost(path) -> list[str]:
    """3 qualifying test authors, 1 test author with too few articles, 1 train author, 1 undated row."""
    tests = _authors("test", 4)
    rows = [r for a in tests[:3] for r in author_articles(a)] + author_articles(tests[3], 3)
    rows += author_articles(_authors("train", 1)[0])
    rows.append({**_article(tests[0], 99, START), "date": ""})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tests[:3]


# ---- the split ---------------------------------------------------------------------------

def test_split_is_by_date_queries_newer_than_every_profile_document():
    author = _authors("test", 1)[0]
    rows = author_articles(author)
    newest = START + timedelta(days=60 * 11)
    earliest_query = START + timedelta(days=60 * 9)
    # A second article on story 9's day: the tie goes to the query by headline, and story 9,
    # not strictly older than that query, is in neither part.
    rows.append(_article(author, 50, earliest_query))
    # A repeat of a query (e.g. in both data files) is one article: never in the profile too.
    rows.append(dict(rows[0]))
    split = split_by_date(author, rows, queries_per_author=3, profile_documents=5, min_profile_documents=2)

    query_dates = [article_date(a) for a in split.queries]
    assert max(split.profile_dates()) < min(query_dates) == split.query_time
    assert max(query_dates) == datetime.combine(newest, datetime.min.time(), timezone.utc)
    # The profile is the P newest articles before the queries, oldest first.
    assert [d.date() for d in split.profile_dates()] == [START + timedelta(days=60 * j) for j in range(4, 9)]
    assert split.profile_ages_days().tolist() == [60.0 * (9 - j) for j in range(4, 9)]
    headlines = [a["headline"] for a in split.queries + split.profile]
    assert len(headlines) == len(set(headlines)) == 8
    assert [a["link"].rsplit("/", 1)[1] for a in split.queries] == ["50", "10", "11"]
    # The split depends on dates, not on file order.
    assert split_by_date(author, list(reversed(rows)), 3, 5, 2) == split
    # The queries are news-task examples: instruction from the description, answer = headline.
    example = split.examples()[0]
    assert example.instruction == news.INSTRUCTION.format(split.queries[0]["short_description"])
    assert example.answer == split.queries[0]["headline"]
    assert split.profile_texts()[0] == news.format_document(split.profile[0]["headline"],
                                                            split.profile[0]["short_description"])


def test_authors_without_enough_older_articles_are_left_out():
    author = _authors("test", 1)[0]
    rows = author_articles(author, count=6)
    assert split_by_date(author, rows, 4, 16, 2) is not None
    assert split_by_date(author, rows, 4, 16, 3) is None          # only 2 older than the queries
    assert split_by_date(author, rows, 7, 16, 1) is None          # not 7 queries
    same_day = [dict(r, date="2022-01-01") for r in rows]          # nothing strictly older
    assert split_by_date(author, same_day, 2, 16, 1) is None


# ---- the weights -------------------------------------------------------------------------

def test_a_half_life_weights_newer_documents_more():
    query_time = datetime(2022, 1, 31, tzinfo=timezone.utc)
    old, new = np.zeros((4, 8), np.float32), np.ones((4, 8), np.float32)
    dates = [query_time - timedelta(days=60), query_time - timedelta(days=30)]
    plain, w_plain = recency_profile([old, new], dates, None, query_time)
    short, w_short = recency_profile([old, new], dates, 30.0, query_time)
    long, w_long = recency_profile([old, new], dates, 720.0, query_time)
    np.testing.assert_allclose(plain, 0.5)
    np.testing.assert_allclose(w_plain, [0.5, 0.5])
    np.testing.assert_allclose(short, 2 / 3, rtol=1e-6)            # weights 1/4 and 1/2 at the query time
    np.testing.assert_allclose(w_short, [1 / 3, 2 / 3])
    assert 0.5 < float(long.mean()) < 2 / 3 and w_long[1] > w_long[0]
    # Order does not matter; a date after the query time counts as the query time (product rule).
    np.testing.assert_array_equal(recency_profile([new, old], dates[::-1], 30.0, query_time)[0], short)
    _, w_future = recency_profile([old, new], [dates[0], query_time + timedelta(days=9)], 60.0, query_time)
    np.testing.assert_allclose(w_future, [1 / 3, 2 / 3])


# ---- end to end ---------------------------------------------------------------------------

def test_rows_against_direct_computation(tiny_checkpoint, commer_cache, tmp_path):
    data = tmp_path / "news.jsonl"
    authors = write_huffpost(data)
    out = tmp_path / "recency"
    argv = ["--data", str(data), "--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache,
            "--half_lives", "30", "180", "720", "--queries_per_author", "2", "--profile_documents", "6",
            "--min_profile_documents", "2", "--resamples", "200", "--batch_size", "3", "--output", str(out)]
    args = recency.build_parser().parse_args(argv)
    args.argv = argv
    result = recency.run(args)

    assert [s.author for s in result["splits"]] == sorted(authors)
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["none", "plain mean", "h=30", "h=180", "h=720"]
    assert all(r["queries"] == 6 and r["authors"] == 3 for r in rows.values())

    # The plain-mean row is commer.merge's mean of each author's compressions, scored per query.
    model = ComMer.from_pretrained(tiny_checkpoint, cache=commer_cache)
    prompts, instructions, answers = [], [], []
    for split in result["splits"]:
        mean = merge_all(model.compress(split.profile_texts()).numpy()).mean()
        for e in split.examples():
            prompts.append(mean)
            instructions.append(e.instruction)
            answers.append(e.answer)
    direct = model.perplexity(prompts, instructions, answers).numpy()
    plain = rows["plain mean"]
    np.testing.assert_allclose(np.exp(plain["_nll"] / plain["_tokens"]), direct, rtol=1e-4)
    no_prompt = model.perplexity([None] * len(answers), instructions, answers).numpy()
    np.testing.assert_allclose(np.exp(rows["none"]["_nll"] / rows["none"]["_tokens"]), no_prompt, rtol=1e-5)
    # ... and the half-lives really change the soft prompt (the tiny model is random, not constant).
    assert not np.allclose(rows["h=30"]["_nll"], plain["_nll"], rtol=1e-6)

    # Profiles of 6 articles 60 days apart, as of the earliest query (60 days after the newest):
    # the plain mean's age is the plain average, a short half-life looks at the newest documents.
    assert plain["weighted_profile_age_days"] == pytest.approx(60 * 3.5)
    assert plain["effective_documents"] == pytest.approx(6)
    ages = [rows[k]["weighted_profile_age_days"] for k in ("h=30", "h=180", "h=720", "plain mean")]
    assert ages == sorted(ages) and ages[0] < 90   # h=30: about 80 days
    assert rows["h=30"]["effective_documents"] < rows["h=720"]["effective_documents"] < 6

    # Paired intervals against the plain mean: its own difference is exactly 0.
    assert plain["delta_perplexity"] == 0 and plain["delta_perplexity_ci"] == [0.0, 0.0]
    for r in rows.values():
        lo, hi = r["perplexity_ci"]
        assert lo <= r["perplexity"] <= hi

    lines = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert lines[0]["kind"] == "header" and lines[0]["authors"] == 3 and lines[0]["undated_articles"] == 1
    assert lines[0]["mean_profile_age_days"] == pytest.approx(60 * 3.5)
    assert [x["label"] for x in lines[1:]] == list(rows)
    table = (out / "table.md").read_text()
    assert table.startswith("### Recency-weighted profiles") and "`python -m training.evaluate_recency --data" in table
    assert "earliest query's date" in table and "| h=720 |" in table


def test_cli_errors_are_one_line_naming_the_flag(tmp_path, capsys):
    data = tmp_path / "news.jsonl"
    write_huffpost(data)
    base = ["--data", str(data), "--output", str(tmp_path / "out")]
    for extra, flag in ((["--queries_per_author", "0"], "--queries_per_author"),
                        (["--half_lives", "30", "-5"], "--half_lives"),
                        (["--min_profile_documents", "20"], "--min_profile_documents"),
                        (["--queries_per_author", "11"], "--data")):
        assert recency.main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and flag in err and "\n" not in err and "Traceback" not in err
