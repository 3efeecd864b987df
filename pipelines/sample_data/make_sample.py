"""Writes the sample corpus shipped with the package (original text, seeded, reproducible).

    python pipelines/sample_data/make_sample.py

Twelve writing styles × three users each (different topics), five to eight documents per user,
split over two JSONL shards (documents-*.jsonl, compress_users' default input) so the default run
also exercises multi-file input. It also writes:

    queries.jsonl            one query per style, asked of the first user of that style, with a
                             reference written in that user's style about that user's topics (so
                             personalized answers can be told from unpersonalized ones), plus one
                             query from a user with no documents (answered unpersonalized)
    dead_letter_demo.jsonl   a few deliberately broken document records, to see dead letters:
                             python3 -m pipelines.compress_users --input pipelines/sample_data/dead_letter_demo.jsonl \
                                 --output /tmp/commer_dead_letter_demo --max_dead_letter_fraction 1
"""
import json
import random
from pathlib import Path

STYLES = {
    "texter": [
        "omg {a} today was sooo good lol, cant stop thinking abt {b}",
        "ok so {a} happened again and honestly?? {b} is the vibe rn",
        "lowkey obsessed w {a}. {b} next weekend maybe?? idk",
        "ngl {a} kinda slapped. tell me why {b} is still on my mind haha",
        "brb {a} then {b}, text me later ok",
    ],
    "academic": [
        "It is worth noting that {a} has received comparatively little systematic attention, although {b} suggests otherwise.",
        "In this note I argue that {a} cannot be understood independently of {b}.",
        "A careful reading of the evidence on {a} indicates a more nuanced relationship with {b} than is usually assumed.",
        "Several open questions remain regarding {a}; in particular, the role of {b} deserves further study.",
        "The present observations on {a} are preliminary, and conclusions about {b} should be drawn with caution.",
    ],
    "enthusiast": [
        "BEST {A} EVER!!! Seriously, {b} changed my whole week!!!",
        "Cannot believe how amazing {a} was!!! Already planning {b}!!!",
        "Wow wow wow. {A} is pure magic and {b} is the cherry on top!!",
        "Everyone needs {a} in their life!!! And do not skip {b}!!!",
        "Another incredible day of {a}!!! {B} next, let's gooo!!!",
    ],
    "engineer": [
        "- fixed flaky test around {a}\n- todo: measure {b}\n- blocked: none",
        "notes: {a} p99 down 12%. next: profile {b}.",
        "postmortem draft: {a} failed under load; root cause linked to {b}.",
        "TIL: {a} caches aggressively. Check {b} before release.",
        "standup: yesterday {a}; today {b}; risks: timeline.",
    ],
    "poet": [
        "morning light on {a} —\nthe quiet hum of {b}\nfading into dusk",
        "I keep {a} folded in my pocket like a letter from {b}.",
        "Slow rain over {a}; somewhere {b} remembers my name.",
        "between {a} and {b} the river keeps its patient counsel",
        "a small bright hour: {a}, {b}, and nothing else required",
    ],
    "grump": [
        "Overpriced. {A} was mediocre at best and {b} was worse.",
        "Not impressed with {a}. Waited forty minutes for {b}. Never again.",
        "People rave about {a}. I do not see it. {B} was the only tolerable part.",
        "Two stars. {A} looked nothing like the photos; {b} was cold.",
        "Why is {a} so loud now? Bring back the old {b}.",
    ],
    "parent": [
        "The kids and I tried {a} this weekend; the little one mostly cared about {b}.",
        "Parenting win of the day: {a} kept everyone calm until {b}.",
        "Packed lunches, then {a}, then the usual negotiation over {b}.",
        "Our family rule this month: more {a}, less {b}. We will see how it goes.",
        "Bedtime story tonight was about {a}, requested again because of {b}.",
    ],
    "fan": [
        "What a match! {A} in the last minute, and {b} had the crowd on its feet.",
        "Gutted about {a}. The defence collapsed and {b} never recovered.",
        "Season prediction: {a} wins it all, {b} surprises everyone.",
        "Rewatched the highlights of {a} three times. {B} deserves more credit.",
        "Derby day tomorrow. Nervous about {a}, confident about {b}.",
    ],
    "analyst": [
        "Q3 takeaways: {a} margins compressed 80bp; watch {b} into year end.",
        "Base case for {a} unchanged; upside risk from {b}.",
        "Revised estimates on {a} after the call; guidance on {b} was conservative.",
        "Positioning note: underweight {a}, neutral on {b} pending data.",
        "Valuation of {a} now screens cheap relative to {b}.",
    ],
    "chef": [
        "Tonight: {a}, seared hard, finished with butter and {b}. Rest five minutes.",
        "Prep list: dice {a}, toast {b}, taste for salt twice.",
        "Tip: bloom {b} in oil before adding {a}; the aroma doubles.",
        "Failed experiment with {a} — too much {b}. Halve it next time.",
        "Sunday batch cook: {a} for the week, {b} on the side.",
    ],
    "traveler": [
        "Day 3. Woke early, walked to {a} before the crowds, then got lost looking for {b}.",
        "Train delayed, so I spent the afternoon at {a}. Worth it for {b} alone.",
        "Last night in town: {a} at sunset and far too much {b}.",
        "Packing list lesson: never skip {b} when heading to {a}.",
        "Border crossing took hours; {a} on the other side made up for it, as did {b}.",
    ],
    "gamer": [
        "gg, carried the squad through {a}. {b} build is broken fr",
        "patch notes nerfed {a} again smh. switching to {b}",
        "speedrun attempt #41: died at {a}, blame {b}",
        "ranked grind: {a} is pain but {b} feels so good to land",
        "new season drops tomorrow, hyped for {a} and {b}",
    ],
}

TOPICS = {
    "texter": [("the concert", "matching tattoos"), ("bubble tea", "the new cafe"), ("thrifting", "vintage jackets")],
    "academic": [("coastal erosion", "sediment transport"), ("medieval trade", "monetary reform"),
                 ("bilingual education", "working memory")],
    "enthusiast": [("trail running", "the mountain race"), ("pottery class", "the kiln firing"),
                   ("salsa dancing", "the Friday social")],
    "engineer": [("the cache layer", "connection pooling"), ("the build pipeline", "incremental compilation"),
                 ("the search index", "query latency")],
    "poet": [("the harbour", "the gulls"), ("the orchard", "my grandmother"), ("the city roofs", "late trains")],
    "grump": [("the brunch place", "the coffee"), ("the cinema", "the popcorn"), ("the hotel", "room service")],
    "parent": [("the science museum", "the gift shop"), ("a picnic", "the ice cream van"),
               ("swimming lessons", "the vending machine")],
    "fan": [("the equaliser", "our keeper"), ("the cup final", "the captain"), ("the away game", "the young winger")],
    "analyst": [("regional banks", "deposit costs"), ("chipmakers", "inventory cycles"),
                ("airlines", "fuel hedging")],
    "chef": [("duck breast", "orange zest"), ("chickpeas", "cumin seeds"), ("mushroom risotto", "thyme")],
    "traveler": [("the old market", "the hidden bookshop"), ("the fjord", "the ferry"),
                 ("the temple gardens", "street noodles")],
    "gamer": [("the final boss", "the crit"), ("the jungle route", "the tank"), ("the ice level", "the double jump")],
}


def fill(template: str, a: str, b: str) -> str:
    return template.format(a=a, b=b, A=a[0].upper() + a[1:], B=b[0].upper() + b[1:])


def main() -> None:
    rng = random.Random(7)
    folder = Path(__file__).parent
    shards = [[], []]
    user = 0
    for style, templates in STYLES.items():
        for a, b in TOPICS[style]:
            user += 1
            user_id = f"user-{user:03d}"
            docs = rng.randint(5, 8)
            for n in range(docs):
                template = templates[n % len(templates)]
                text = fill(template, a, b)
                if n >= len(templates):
                    text = fill(templates[(n + 2) % len(templates)], b, a)
                record = {"user_id": user_id, "doc_id": f"{user_id}-doc-{n + 1}", "text": text,
                          "created_at": f"2026-0{1 + n % 9}-{10 + user % 18:02d}T08:00:00Z"}
                shards[(user + n) % 2].append(record)
    for i, rows in enumerate(shards):
        write_jsonl(folder / f"documents-{i}.jsonl", rows)
    write_jsonl(folder / "queries.jsonl", queries())
    with open(folder / "dead_letter_demo.jsonl", "wb") as f:
        f.write(DEAD_LETTER_DEMO)


QUESTION = "Write a short post about your weekend."
DEAD_LETTER_DEMO = b"""{"user_id": "demo-1", "doc_id": "d1", "text": "A valid record: it is compressed."}
{"user_id": "demo-1", "doc_id": "d1", "text": "Same doc_id again: counted as a duplicate."}
{"user_id": "demo-1", "doc_id": "d2", "text": "   "}
{"user_id": "", "doc_id": "d3", "text": "An empty user_id."}
{"user_id": "demo-2", "text": "No doc_id."}
{"user_id": "demo-2", "doc_id": "d4", "text": 42}
{"user_id": "demo-2", "doc_id": "d5", "text": "Truncated JSON
not json at all
"""


def queries() -> list[dict]:
    """One query per style (its first user), reference in that user's voice on that user's topics."""
    rows = []
    for i, (style, templates) in enumerate(STYLES.items()):
        a, b = TOPICS[style][0]
        rows.append({"user_id": f"user-{3 * i + 1:03d}", "query_id": f"q{i:03d}", "instruction": QUESTION,
                     "reference": fill(templates[0], a, b)})
    rows.append({"user_id": "user_without_documents", "query_id": f"q{len(rows):03d}", "instruction": QUESTION,
                 "reference": "Quiet weekend at home with a good book."})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
