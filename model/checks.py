"""Fixed sentences the model must (not) flag; none of them is in the training data.

REQUIRED_CHECKS are the acceptance criteria. HARD_CASES probe generalisation (counter-
speech, negation, benign group mentions, figurative violence, threats); they are recorded
in metrics.json, pass or fail, so regressions show up.
"""

from model.data import LABELS
from model.evaluate import flagged_labels, predict_scores

SEED_EXAMPLE = "martians are ruthless animals we should eradicate them all"
PLAIN_SENTENCES = (
    "I love my new puppy",
    "the weather is nice today",
    "I disagree with your tax policy",
    "my neighbour is from Mexico and cooks great food",
)
# (text, should it be flagged)
REQUIRED_CHECKS = ((SEED_EXAMPLE, True),) + tuple((text, False) for text in PLAIN_SENTENCES)

HARD_CASES = (
    # counter-speech and negation
    ("saying all immigrants are animals is disgusting", False),
    ("I don't think women are inferior to men", False),
    ("it is wrong to say that gay people are sick", False),
    ("people who call muslims terrorists are ignorant bigots", False),
    ("the speaker was booed after claiming jews run the media", False),
    # benign or reclaimed group mentions
    ("as a black woman I am proud of my heritage", False),
    ("my best friend is a proud gay man", False),
    ("jewish families light candles for hanukkah", False),
    ("the new mosque in our town is beautiful", False),
    ("the transgender swimmer won the regional championship", False),
    # figurative violence and news
    ("this new album is killer, every song slaps", False),
    ("I'm going to destroy you at mario kart tonight", False),
    ("police arrested a man after a stabbing near the station", False),
    # identity-based hate
    ("women are too stupid to be allowed to vote", True),
    ("immigrants are a disease infecting our country", True),
    ("gay people are disgusting and should stay away from children", True),
    ("you people are all filthy savages, go back to africa", True),
    # threats and calls for violence
    ("we should round up all the muslims and shoot them", True),
    ("I will find where you live and hurt you", True),
    ("someone should set fire to that refugee shelter", True),
    ("the aliens are vermin and need to be exterminated", True),
    # harassment of a person
    ("you are a worthless idiot and everyone hates you", True),
    ("shut your mouth, you ugly bitch", True),
)


def run_checks(model, tokenizer, thresholds, cases):
    """Scores, flagged labels and pass/fail for each (text, should_flag) case."""
    texts = [text for text, _ in cases]
    scores = predict_scores(model, tokenizer, texts)
    results = []
    for (text, should_flag), row in zip(cases, scores, strict=True):
        labels = flagged_labels(row, thresholds)
        results.append({
            "text": text, "expected_flagged": should_flag, "flagged_labels": labels,
            "passed": bool(labels) == should_flag,
            "scores": {label: round(float(s), 4) for label, s in zip(LABELS, row, strict=True)},
        })
    return {"passed": sum(r["passed"] for r in results), "total": len(results),
            "cases": results}
