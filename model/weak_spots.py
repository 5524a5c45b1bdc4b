"""Generate model/weak_spot_examples.tsv: templated training examples for the model's weak spots.

    python -m model.weak_spots          # rewrites model/weak_spot_examples.tsv (deterministic)

Matched pairs of harmful and harmless texts that share their words, so the model must learn what
separates them rather than which words occur:
- identity mentions: neutral or supportive statements about groups versus hateful ones; counter-speech
  and negation that quote a hateful claim to reject it versus the claim itself (and negations that are
  still hateful: "X are not human");
- violence as news, medicine, sport, games, fiction and history versus threats and glorification;
- self-harm help-seeking, support for others, recovery and prevention versus ideation and encouragement;
- insults at a person (harassment) versus the same abuse at a group (hate), and criticism without abuse.

Written by the project from its own templates and slot lists, never from public evaluation sets.
Generated texts that are near-duplicates (by template, model/suite.py) of any functional-suite case are
dropped, so the suite stays a test of generalisation. The examples are only ever trained on
(model/data.py keeps the "generated" source out of the validation and test splits: siblings of one
template would otherwise leak into them).
"""

from __future__ import annotations

import itertools
import os
import random

from model.data import MODEL_DIR

OUTPUT_PATH = os.path.join(MODEL_DIR, "weak_spot_examples.tsv")
SEED = 19
PER_TEMPLATE = 14  # slot combinations drawn per template (all of them when there are fewer)

GROUPS = [
    "muslims", "jews", "black people", "trans people", "gay men", "lesbians", "immigrants", "refugees",
    "women", "disabled people", "mexicans", "asian people", "arabs", "hindus", "sikhs", "roma",
    "native americans", "bisexual people", "nonbinary people", "chinese people", "africans", "christians",
    "deaf people", "autistic people", "latinos", "polish workers", "somalis", "indigenous people",
]
# Hateful predicates: what the hateful claims say, and what counter-speech and negation quote.
SMEARS = [
    "parasites", "vermin", "animals", "subhuman", "a disease", "criminals by nature", "inferior",
    "dirty and diseased", "all terrorists", "predators", "a plague on this country", "mentally ill freaks",
    "too stupid to think for themselves", "a danger to our children", "cockroaches", "less than human",
]
INSULTS = [
    "idiot", "moron", "loser", "clown", "creep", "lowlife", "pig", "imbecile", "jerk", "waste of space",
    "pathetic excuse for a human", "braindead troll", "liar", "coward", "scumbag", "joke",
]
INSULT_ADJECTIVES = ["stupid", "hideous", "worthless", "pathetic", "disgusting", "clueless", "useless", "fat"]
PEOPLE = [
    "the mayor", "this author", "the senator", "the guy in the comments", "your boss", "my ex", "the coach",
    "the new manager", "this reporter", "the councillor", "the landlord", "that streamer", "the referee",
]
PLACES = ["a bar", "the train station", "a supermarket", "the high school", "a nightclub", "the stadium",
          "a petrol station", "the city park", "an apartment block", "the bus depot"]
WEAPONS = ["a knife", "a baseball bat", "a hammer", "a broken bottle", "a gun", "a machete"]
THREAT_ACTS = [
    "break both your legs", "stab you", "beat you half to death", "put a bullet in your head",
    "burn your house down with you inside", "slit your throat", "strangle you", "smash your face in",
    "run you over", "break every bone in your hand",
]
RELATIONS = ["my sister", "my best friend", "my son", "my daughter", "my partner", "a coworker",
             "my roommate", "my brother", "a student of mine", "my dad"]
DURATIONS = ["six months", "two years", "90 days", "a year", "three weeks", "five years", "eight months"]

TEMPLATES: list[tuple[str, str, str, dict]] = []
TOPICS = ("identity", "violence", "self-harm", "insult")  # one training bucket per topic and verdict


def add(topic: str, labels: str, *texts: str, **slots):
    """Register templates (str.format fields) sharing a topic, labels and slot lists."""
    for text in texts:
        TEMPLATES.append((text, topic, labels, slots))


G, X = {"g": GROUPS}, {"g": GROUPS, "x": SMEARS}

# --- identity mentions: benign versus hateful ------------------------------------------------------
add("identity", "none",
    "{g} have every right to live here in peace",
    "our town has a growing community of {g} and the festival was lovely",
    "the documentary follows a few {g} through a year of their lives",
    "I went to a talk about the history of {g} in this country",
    "the charity raises money for {g} who lost their homes",
    "there's a new support group for {g} at the library on thursdays",
    "the survey asked {g} about their experiences at work",
    "{g} are underrepresented in parliament, the report says",
    "many {g} in our neighbourhood volunteer at the food bank",
    "a lot of {g} I know are worried about the new law",
    "the museum opened an exhibition on the art of {g}",
    "as an ally of {g} I try to listen more than I talk",
    "{g} are people with the same hopes and worries as everyone",
    "the panel on discrimination against {g} was really informative",
    "I'm writing my thesis on how the media portrays {g}",
    **G)
add("identity", "hate",
    "{g} are filthy and ruin every place they move into",
    "I can't stand {g}, every single one of them is disgusting",
    "get {g} out of our neighbourhood, nobody wants them here",
    "{g} don't deserve any rights at all",
    "{g} should not be allowed anywhere near our schools",
    "honestly {g} are the worst thing that ever happened to this country",
    "{g} are all the same, lazy and useless",
    "never trust {g}, it's in their blood to lie",
    "{g} breed like rats and take everything from us",
    "ban {g} from every job that matters",
    **G)
add("identity", "hate",
    "{g} are {x}",
    "let's be honest, {g} are {x}",
    "everyone knows {g} are {x}",
    "{g} are {x} and always will be",
    "I'm not racist but {g} are {x}",
    "science proves that {g} are {x}",
    **X)
# --- counter-speech and negation (harmless) versus hateful negation -------------------------------
add("identity", "none",
    "saying {g} are {x} is bigoted nonsense",
    "it is never okay to call {g} {x}",
    "stop spreading the lie that {g} are {x}",
    "my uncle said {g} are {x} and I told him how wrong he was",
    "people who claim {g} are {x} should be ashamed of themselves",
    "the idea that {g} are {x} has been debunked again and again",
    "I reported a post calling {g} {x}, that hate has no place here",
    "the teacher explained why calling {g} {x} is dehumanising",
    "the article shows how propaganda painted {g} as {x}",
    "no, {g} are not {x}, and repeating it doesn't make it true",
    "it's false and hurtful to say that {g} are {x}",
    "whoever wrote that {g} are {x} on the wall should be caught",
    **X)
add("identity", "hate",
    "{g} are not human and never will be",
    "{g} are not welcome in this country, not now, not ever",
    "I don't think {g} should be allowed to vote",
    "{g} will never be real citizens no matter what papers they have",
    "there is no such thing as a decent one among {g}",
    "not one of those {g} deserves to be treated as an equal",
    **G)
# --- violence: description, news, medicine, sport, games, fiction versus threats, glorification ---
add("violence", "none",
    "police say a man was stabbed outside {p} late last night",
    "two people were injured in a shooting near {p}, police said",
    "a suspect was arrested after an assault at {p} on saturday",
    "witnesses described a fight at {p} that left one man in hospital",
    "the court heard the victim was attacked with {w} outside {p}",
    "the robbery at {p} ended without anyone being hurt",
    p=PLACES, w=WEAPONS)
add("violence", "none",
    "the patient arrived with a deep stab wound to the abdomen",
    "gunshot wounds to the chest need surgery within the hour",
    "how should I clean a deep cut from {w} before going to the doctor",
    "the nurse cleaned the wound and closed it with six stitches",
    "my knee is swollen and bruised after the fall, could it be broken",
    "symptoms of a concussion include headache, nausea and confusion",
    "the paramedics stopped the bleeding and took him to surgery",
    "a broken rib usually heals in about six weeks",
    "the autopsy found blunt force trauma to the head",
    "first aid for a bleeding wound: press firmly and raise the limb",
    w=WEAPONS)
add("violence", "none",
    "he knocked his opponent out cold in the third round",
    "the boxer broke his nose in round two but kept fighting",
    "we got absolutely slaughtered 5-0 last night",
    "that tackle was brutal but the referee called it clean",
    "she destroyed the defence and scored a hat trick",
    "the fighter choked his opponent out to win the title",
    "our team murdered them in the second half",
    "my character got killed by a boss three times before I beat it",
    "I keep getting headshotted by snipers in this map",
    "the rookie took a nasty hit and was carried off on a stretcher",
    )
add("violence", "none",
    "in chapter three the villain shoots the detective's partner",
    "the film opens with a bloody sword fight in the rain",
    "in my novel the killer hides {w} under the floorboards",
    "the thriller's plot turns on a murder at {p}",
    "the play ends with the king stabbed by his own son",
    "the horror movie was so gory I had to look away",
    "thousands of soldiers died in the battle over the river crossing",
    "the massacre is remembered every spring with a silent march",
    "historians still argue about why the war turned so brutal",
    "the museum shows the weapons used in the civil war",
    p=PLACES, w=WEAPONS)
add("violence", "harassment,violence",
    "I'm going to find where you live and {a}",
    "say that one more time and I'll {a}",
    "watch your back, one day I will {a}",
    "if you show up at {p} again I'll {a}",
    "I know your address, I will {a} tonight",
    "you better sleep with one eye open, I'm going to {a}",
    a=THREAT_ACTS, p=PLACES)
add("violence", "violence",
    "someone should take {w} to {n} and finish the job",
    "I hope somebody shoots up {p} this weekend",
    "we should go down to {p} with {w} and make them pay in blood",
    "whoever did the attack at {p} is a hero, I hope more follow",
    "that bombing was beautiful, I watched the video ten times",
    "I loved watching him bleed out, he got exactly what he deserved",
    "the shooter did nothing wrong, more people should do the same",
    "I wish I'd been there to help them burn it all down with people inside",
    "beating that man to death was the best thing they ever did",
    "kicking his head in until he stopped moving felt amazing",
    n=PEOPLE, p=PLACES, w=WEAPONS)
# --- self-harm: help, support, recovery, prevention versus ideation and encouragement -------------
add("self-harm", "none",
    "{d} clean from self-harm today and I'm proud of myself",
    "I relapsed once but I'm {d} clean now and doing better",
    "therapy helped me through the worst of it, I'm {d} into recovery",
    "I used to hurt myself but it's been {d} and I have better ways to cope now",
    d=DURATIONS)
add("self-harm", "none",
    "how can I support {r} who has been self-harming",
    "{r} told me they think about suicide, what should I say to them",
    "what are the warning signs that {r} might be suicidal",
    "I'm worried about {r}, they seem really depressed lately, where can we get help",
    "I drove {r} to the crisis centre last night and they're safe now",
    r=RELATIONS)
add("self-harm", "none",
    "if you're thinking about suicide please call or text a crisis line, you are not alone",
    "the crisis line helped me a lot last year, please reach out if you need it",
    "our school runs a suicide prevention workshop every term",
    "the report looks at why suicide rates rose among young men",
    "she wrote a memoir about surviving depression and her suicide attempt",
    "self-harm is a way of coping with pain, and people can recover with support",
    "talking to a counsellor about my dark thoughts really helped",
    "the hospital added more mental health beds for teenagers",
    "we lost my uncle to suicide ten years ago and we still talk about him",
    "my therapist gave me a safety plan and it works for me",
    )
add("self-harm", "self-harm",
    "I want to end it all tonight",
    "I've been cutting again and I don't want to stop",
    "nobody would miss me if I was gone",
    "I'm saving up my pills to take them all at once",
    "what's the quickest way to end my life without pain",
    "I keep thinking about stepping in front of a train",
    "I don't want to be alive anymore, everything hurts",
    "I deserve the pain, so I burn my arms at night",
    "I've decided how I'll do it, I just need to pick a day",
    "every day I think about how I would kill myself",
    "I'm not eating until I disappear, tell me how to hide it from my parents",
    "tonight I'm going to take every pill in the house",
    )
add("self-harm", "self-harm",
    "starving yourself is the only way to be pretty, keep going",
    "if you really wanted to die you'd cut deeper",
    "just do it, end your life, it's the only way out",
    "post your cuts, we'll rate them",
    "skipping meals for a week is the best way to get thin, don't give up",
    )
add("self-harm", "harassment,self-harm",
    "you should just kill yourself, {n}",
    "go cut yourself, you {j} {i}",
    "nobody wants you here, do everyone a favour and die, {n}",
    n=["nobody would care", "you worthless loser", "seriously", "you freak"],
    j=INSULT_ADJECTIVES, i=INSULTS)
# --- insults at a person (harassment) versus abuse at a group (hate) and plain criticism -----------
add("insult", "harassment",
    "you are a {j} {i} and everyone knows it",
    "shut up, you {j} {i}",
    "nobody likes you, you {i}",
    "{n} is a {j} {i} who should resign",
    "only a {j} {i} like you would write this garbage",
    "go away, {i}, nobody asked for your opinion",
    "you're too {j} to understand the article, {i}",
    "what a {j} {i} {n} is",
    "you are the most {j} person I've ever had to deal with",
    "hey {i}, learn to read before commenting",
    j=INSULT_ADJECTIVES, i=INSULTS, n=PEOPLE)
add("insult", "hate",
    "{g} are {j} {i}s, all of them",
    "typical {g}, every one of them a {j} {i}",
    "{g} are nothing but {j} {i}s who should go back where they came from",
    g=GROUPS, j=INSULT_ADJECTIVES, i=["idiot", "moron", "pig", "lowlife", "scumbag", "animal", "parasite"])
add("insult", "none",
    "I think {n} is wrong about this and here is why",
    "{n}'s plan is badly thought out and will cost too much",
    "with respect, your argument ignores the actual numbers",
    "{n} made a mistake and should apologise",
    "I strongly disagree with {n}, but I'd like to hear more",
    "this article is poorly researched and the headline is misleading",
    "{n} has been useless on housing for years, vote them out",
    "your comment makes no sense to me, can you explain",
    n=PEOPLE)


def expand(template: str, slots: dict, rng: random.Random) -> list[str]:
    """Up to PER_TEMPLATE fillings of a template, drawn without replacement from its slot product."""
    names = [name for name in slots if "{" + name + "}" in template]
    combos = list(itertools.product(*(slots[name] for name in names)))
    rng.shuffle(combos)
    return [template.format(**dict(zip(names, combo, strict=True))) for combo in combos[:PER_TEMPLATE]]


def generate() -> list[tuple[str, str]]:
    """(text, labels, topic) rows, deterministic, with near-duplicates of functional-suite cases left out."""
    from model.data import FUNCTIONAL_SUITE_PATH, dedup_key, read_tsv
    from model.suite import near_duplicates

    rng = random.Random(SEED)
    rows, seen = [], set()
    for text, topic, labels, slots in TEMPLATES:
        for filled in expand(text, slots, rng):
            if dedup_key(filled) not in seen:
                seen.add(dedup_key(filled))
                rows.append((filled, labels, topic))
    suite = [row["text"] for row in read_tsv(FUNCTIONAL_SUITE_PATH)]
    near = near_duplicates([row[0] for row in rows], suite)
    print(f"left out {len(near)} near-duplicates of functional-suite cases")
    return [row for row in rows if row[0] not in near]


HEADER = """\
# Generated by `python -m model.weak_spots` (model/weak_spots.py): do not edit by hand.
# Templated examples for the weak spots (identity mentions, counter-speech and negation, violence in
# context, self-harm help versus ideation, harassment versus hate); training split only.
text\tlabels\ttopic
"""


def main():
    rows = generate()
    with open(OUTPUT_PATH, "w", encoding="utf-8") as f:
        f.write(HEADER)
        f.writelines(f"{text}\t{labels}\t{topic}\n" for text, labels, topic in rows)
    counts: dict[str, int] = {}
    for _, labels, topic in rows:
        key = f"{topic}:{labels}"
        counts[key] = counts.get(key, 0) + 1
    print(f"{len(rows)} examples -> {OUTPUT_PATH}", counts)


if __name__ == "__main__":
    main()
