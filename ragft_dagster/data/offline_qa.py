"""The offline Q&A generator: facts mined from a chunk's markdown by plain rules, no LLM
(Dagster-free). The driver that runs it, or an OpenAI-compatible endpoint, over a batch of
documents is :mod:`ragft_dagster.data.qa_generation`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The offline generator reads a chunk's markdown like a person skimming it for facts: bold-term
# definitions, "X is Y." sentences, defaults, limits, settings in lists and tables, commands in
# shell blocks, numbered steps and examples. Each fact becomes a question a user would ask, and
# the answer is the one or two sentences that state it, so a model trained on the pairs learns
# the fact, not the layout of the page. Plain rules over words, no NLP model: deterministic, and
# a rule that misreads a sentence only costs that one question.


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`*\"(\d])")
_CODE_SPAN = re.compile(r"(`+)[^\n]*?\1")
_FENCE_OPEN = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+#.-]*)")
_LIST_ITEM = re.compile(r"^\s*([-*+]|\d{1,3}[.)])\s+(\S.*)$")
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_TABLE_RULE = re.compile(r"^[\s|:-]+$")
_HEADING_LINE = re.compile(r"^\s{0,3}#{1,6}\s")
_BOLD_LEAD = re.compile(r"^\*\*([^*\n]{1,60})\*\*\s*(?::|—|–|\s-\s)\s*(\S.*)$", re.S)
_BOLD_INLINE = re.compile(r"\*\*([^*\n]{2,60})\*\*(?=\s*[:—–])")
_SHELL_LANGS = _wordset("sh bash shell console zsh fish shell-session terminal")
_KIND_ORDER = ("definition", "default", "limit", "parameter", "command", "steps", "example")
_STATEMENT = "statement"  # "What does X do?" about a plain sentence: fills what is left
_EXAMPLE_LINES, _EXAMPLE_CHARS = 25, 1200  # a longer block is not an answer anyone wants

# Words that start a sentence without naming its subject ("It is ...", "If ..., ...").
_NOT_SUBJECTS = _wordset(
    "it its this that these those there they their them we you your our he she his her if "
    "when while where for in on at with after before by as so then also here what which "
    "who how why because although though since until unless once but and or not no yes "
    "both such other another some most many much more all every each any only instead "
    "together however"
)
_DETERMINERS = _wordset(
    "a an the one two three four five six seven eight nine ten each every any either only "
    "its their this these those some no"
)
_PREPOSITIONS = _wordset("of in on for with to from by at under into over about")
_FINITE = _wordset("is are was were can must will should may cannot does do has have")
_IRREGULAR_PARTICIPLES = _wordset(
    "built chosen done drawn found given held kept known made put read run sent set shown "
    "split spent taken told written thrown brought caught meant paid cut hidden driven "
    "frozen broken"
)
_NOT_PARTICIPLES = _wordset("need seed speed feed embed hundred")
_ADVERBS = _wordset(
    "also always usually only automatically then therefore first often still just simply again now"
)
# Verbs whose object is the answer ("What does the quickstart use?"); others ask "... do?".
_OBJECT_VERBS = _wordset(
    "use need store hold read contain produce show embed return record take accept "
    "compute write create include report support have compare measure keep add load "
    "select choose describe give list share mean require expect skip drop remove replace "
    "save find pass send cache follow name set merge build train score summarise"
)
# Imperative verbs that open an instruction ("Check that ...:") or a task heading.
_INSTRUCTION_VERBS = _wordset(
    "run check start stop install use set open load create copy point add remove delete "
    "build deploy configure enable disable call type execute export clone update upgrade "
    "launch download inspect list test lint verify restart write edit pass change free "
    "rerun re-run select generate train score merge evaluate serve query ask read look "
    "see make choose save keep drop skip ignore include exclude turn treat"
)
_GERUNDS = {
    **{f"{v}ing": v for v in _INSTRUCTION_VERBS},
    **{f"{v[:-1]}ing": v for v in _INSTRUCTION_VERBS if v.endswith("e")},
    **{f"{v}{v[-1]}ing": v for v in ("run", "stop", "set", "get", "put", "cut", "plan")},
    "getting": "get",
}
_PROBLEM_WORDS = re.compile(
    r"\b(?:not|cannot|can't|fails?|failing|error|errors|wrong|rejected|stale|missing|slow|"
    r"hangs?|waits?|crash(?:es)?|broken|touch(?:es)?|near)\b",
    re.I,
)


@dataclass
class _Block:
    """One markdown block of a chunk: a paragraph, a list item, a code block or a table."""

    kind: str  # para, bullet, numbered, code, table
    text: str
    lang: str = ""
    lead: str = ""  # the last sentence of the paragraph just before it (code, list, table)
    whole: bool = True  # False for a code block the chunk window cut


@dataclass(frozen=True)
class _Candidate:
    kind: str
    question: str
    answer: str
    source: str  # the sentence or block the fact comes from: one pair per fact comes first
    subject: str = ""  # what the question is about, as it reads in the question


def _outside_code(text: str, fn: Callable[[str], str]) -> str:
    """``text`` with ``fn`` applied to the parts outside inline code spans."""
    out, at = [], 0
    for m in _CODE_SPAN.finditer(text):
        out += [fn(text[at : m.start()]), m.group()]
        at = m.end()
    out.append(fn(text[at:]))
    return "".join(out)


def _clean(text: str) -> str:
    """Markdown prose as plain sentences: emphasis and link syntax dropped, code spans kept."""

    def prose(part: str) -> str:
        part = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", part)
        part = re.sub(r"(\*\*|__)(.+?)\1", r"\2", part)
        return re.sub(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])", r"\1", part)

    return " ".join(_outside_code(text, prose).split())


def _sentences(text: str, cut_head: bool = False, cut_tail: bool = False) -> list[str]:
    """The sentences of one prose block, cleaned. Where the chunk window may have cut the block,
    a first sentence without a capital (``cut_head``) and a last one without final punctuation
    (``cut_tail``) are fragments and left out: they state no fact."""
    out = [s.strip() for s in _SENTENCE_END.split(_clean(text)) if s.strip()]
    if cut_head and out and not re.match(r"[A-Z0-9`\"(*]", out[0]):
        out = out[1:]
    if cut_tail and out and not out[-1].endswith((".", "!", "?", ":", ";", ")", "`")):
        out = out[:-1]
    return out


def _finish(sentence: str, capital: bool = True) -> str:
    """A list item or fragment as a sentence: full stop last, and a capital first unless it
    starts with a name that is written in lower case (``top_k is ...``)."""
    sentence = sentence.strip().rstrip(";,:").strip()
    if not sentence:
        return sentence
    if capital and sentence[0].islower():
        sentence = sentence[0].upper() + sentence[1:]
    return sentence if sentence.endswith((".", "!", "?")) else sentence + "."


def _parse_blocks(text: str) -> list[_Block]:
    """Split a chunk into paragraphs, list items, code blocks and tables (headings dropped)."""
    blocks: list[_Block] = []
    para: list[str] = []
    lines = text.splitlines()
    fences = [(i, m.group(2)) for i, ln in enumerate(lines) if (m := _FENCE_OPEN.match(ln))]
    start = 0
    if len(fences) % 2 and not text.lstrip().startswith("#") and not fences[0][1]:
        # An odd number of fences in a window that does not open its section, the first one
        # bare: the window starts inside a code block, and its tail is no whole example.
        start = fences[0][0] + 1

    def flush() -> None:
        if para:
            blocks.append(_Block("para", " ".join(para)))
            para.clear()

    i = start
    while i < len(lines):
        line = lines[i]
        fence = _FENCE_OPEN.match(line)
        if fence:
            flush()
            mark, body = fence.group(1), []
            i += 1
            while i < len(lines) and not (
                lines[i].strip().startswith(mark) and set(lines[i].strip()) == {mark[0]}
            ):
                body.append(lines[i])
                i += 1
            code = _Block("code", "\n".join(body), fence.group(2).lower(), whole=i < len(lines))
            blocks.append(code)
        elif not line.strip() or _HEADING_LINE.match(line):
            flush()
        elif _TABLE_ROW.match(line):
            flush()
            rows = []
            while i < len(lines) and _TABLE_ROW.match(lines[i]):
                rows.append(lines[i])
                i += 1
            blocks.append(_Block("table", "\n".join(rows)))
            continue
        elif item := _LIST_ITEM.match(line):
            flush()
            parts = [item.group(2)]
            while (
                i + 1 < len(lines)
                and lines[i + 1].strip()
                and not _LIST_ITEM.match(lines[i + 1])
                and not _FENCE_OPEN.match(lines[i + 1])
                and not _HEADING_LINE.match(lines[i + 1])
            ):
                i += 1
                parts.append(lines[i].strip())
            kind = "bullet" if item.group(1) in "-*+" else "numbered"
            blocks.append(_Block(kind, " ".join(parts)))
        else:
            para.append(line.strip())
        i += 1
    flush()
    for before, block in zip(blocks, blocks[1:], strict=False):
        if block.kind != "para" and before.kind == "para":
            sentences = _sentences(before.text, cut_head=True)
            block.lead = sentences[-1] if sentences else ""
    return blocks


def _lower_first(phrase: str) -> str:
    """'The qa section' -> 'the qa section'; 'LoRA training' and '`key`' stay as they are."""
    word = phrase.split(" ", 1)[0]
    if word[:1].isupper() and (len(word) == 1 or word[1:].islower()):
        return phrase[0].lower() + phrase[1:]
    return phrase


def _as_in_text(term: str, text: str) -> str:
    """``term`` as it reads mid-sentence: its capital dropped when the chunk also writes its
    first word in lower case ('Chunk size' -> 'chunk size'; 'Wilson interval' stays)."""
    first = term.split(" ", 1)[0]
    lowered = first[:1].isupper() and first[1:].islower()
    if lowered and re.search(rf"\b{re.escape(first.lower())}\b", text):
        return term[0].lower() + term[1:]
    return term


def _subject_phrase(subject: str, text: str) -> str:
    """A sentence's subject as it reads mid-question: 'The index' -> 'the index'."""
    first, _, rest = subject.partition(" ")
    if first in ("The", "A", "An") and rest:
        return f"{first.lower()} {rest}"
    return _as_in_text(subject, text)


def _acronym(word: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z0-9]+s?", word))


def _article(term: str) -> str:
    return "an" if term[:1].lower() in "aeiou" else "a"


def _codeish(term: str) -> bool:
    return bool(re.search(r"[`_./@:]", term)) or (term.islower() and " " not in term)


def _is_participle(word: str) -> bool:
    word = word.lower()
    if word in _IRREGULAR_PARTICIPLES:
        return True
    return len(word) > 4 and word.endswith("ed") and word not in _NOT_PARTICIPLES


def _verb_base(word: str) -> str | None:
    """The base form of a third-person verb ('uses' -> 'use'), None when ``word`` is not one."""
    if not re.fullmatch(r"[a-z][a-z-]{2,}", word) or word.endswith(("ss", "us", "is", "ous")):
        return None
    if word in ("has", "does"):
        return {"has": "have", "does": "do"}[word]
    if word in ("this", "its", "yes", "always", "perhaps", "was", "series", "less"):
        return None
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zes", "oes")):
        return word[:-2]
    return word[:-1] if word.endswith("s") else None


def _words(sentence: str) -> list[str]:
    """Words of a sentence, an inline code span counting as one word."""
    return re.findall(r"`[^`]*`[\w'.,:;)-]*|\S+", sentence)


def _names_something(subject: list[str]) -> bool:
    """Whether words open a subject a question can name: 'The asset', '`doc_chunks`',
    'SLERP', 'ragft_dagster' (not 'Unchanged', 'Counting', 'Read the ...')."""
    first = subject[0]
    if first.lower() in ("the", "a", "an"):
        return len(subject) > 1
    return first.startswith("`") or "_" in first or _acronym(first.strip(",.;:"))


def _subject_and_verb(sentence: str) -> tuple[str, str, str] | None:
    """(subject, verb base, rest) of 'The asset turns every chunk ...'-like sentences."""
    words = _words(sentence)
    if len(words) < 3 or not _names_something(words):
        return None
    for n in range(1, min(len(words) - 1, 7)):
        word, subject = words[n], words[:n]
        if any(w.endswith((",", ";", ":", ")")) or "(" in w for w in subject):
            return None
        if {w.lower() for w in subject} & {"that", "which", "who", "and", "or", "whose"}:
            return None
        while len(subject) > 1 and subject[-1].lower() in _ADVERBS:
            subject = subject[:-1]
        if any(
            w.lower() in _DETERMINERS and subject[j - 1].lower() not in _PREPOSITIONS
            for j, w in enumerate(subject[1:], 1)
        ):
            return None  # "The paper ran the same 50 ...": a verb came before the second "the"
        if subject[-1].lower() in _DETERMINERS or subject[-1].lower().endswith("ing"):
            continue
        base = _verb_base(word)
        after = [w.lower() for w in words[n + 1 : n + 5]]
        if base and after[:1] not in (["of"], ["and"], ["or"]) and not set(after) & _FINITE:
            return " ".join(subject), base, " ".join(words[n + 1 :])
        if word.lower() in _FINITE or word.lower() in ("never", "not"):
            return None
    return None


def _heading_phrase(heading: str) -> str:
    return _lower_first(_clean(heading).rstrip(".:?"))


def _title_phrase(title: str) -> str:
    """A page title as it reads mid-sentence: only a leading article loses its capital
    ('The vector index' -> 'the vector index'; 'Guide' stays a name)."""
    title = _clean(title).rstrip(".:?")
    first, _, rest = title.partition(" ")
    return f"{first.lower()} {rest}" if first in ("The", "A", "An") and rest else title


def _heading_task(heading: str) -> str | None:
    """What a heading says to do, as 'How do I ...?' takes it: 'Running without make' -> 'run
    without make'; None when the heading does not name a task."""
    text = _clean(heading).rstrip(".:?")
    if m := re.match(r"(?i)how to (.+)", text):
        return _your_to_my(m.group(1))
    if m := re.search(r"(?i)\bcommand to (.+)", text):
        return _your_to_my(m.group(1))
    first, _, rest = text.partition(" ")
    base = _GERUNDS.get(first.lower())
    if base is None and first.lower() in _INSTRUCTION_VERBS:  # "Install", "Run the tests"
        base = first.lower()
    if base:
        return _your_to_my(f"{base} {rest}".strip())
    return None


def _your_to_my(text: str) -> str:
    return re.sub(r"\byour\b", "my", re.sub(r"\byou\b", "I", text))


def _instruction(sentence: str) -> str | None:
    """The task of an instruction that introduces a command ('To start the server, run:' ->
    'start the server'; 'Check that X:' -> 'check that X'); None for other sentences."""
    s = sentence.rstrip(":. ")
    if m := re.match(r"(?i)(?:to|in order to) ([^,]{4,120}), (?:run|use|type|execute|call)\b", s):
        return _your_to_my(m.group(1))
    s = re.sub(r"^(?:From|In|Inside|On|Then|First|Next|Finally|If|When|Now)\b[^,]{0,80}, ", "", s)
    words = s.split()
    if len(words) < 3 or len(words) > 16 or words[0].lower() not in _INSTRUCTION_VERBS:
        return None
    if " or " in s:  # "stop it or start Dagster on another port": the self-contained half
        head, _, tail = s.partition(" or ")
        if re.search(r"\b(?:it|them|this|that)\b", head) and tail.split()[0] in _INSTRUCTION_VERBS:
            s = tail
    return _your_to_my(s[0].lower() + s[1:])


def _bold_lead(
    block: _Block, text: str, cut_tail: bool
) -> tuple[_Candidate, str, bool, list[str]] | None:
    """'**Term**: a definition.' -> (the 'What is a term?' pair, the term, whether the term is
    a setting or action ('What does X do?'), the block's sentences after the definition)."""
    m = _BOLD_LEAD.match(block.text.strip())
    if not m:
        return None
    term = _clean(m.group(1)).strip()
    body = _sentences(m.group(2), cut_tail=cut_tail)
    if not term or not body:
        return None
    used = 2 if len(body[0].split()) < 12 else 1
    rest = " ".join(body[:used])
    words = rest.split()
    first = words[0]
    shown = _as_in_text(term, text)
    # "the supporting chunk was not retrieved" is a clause, not a noun phrase: "X is the ..."
    # would not read, so it stays "X: ..." ("the folder that holds ..." is a noun phrase).
    clause = any(
        (w.lower() in _FINITE or _verb_base(w) and words[j].startswith("`"))
        and words[j].lower() not in ("that", "which", "who")
        for j, w in enumerate(words[1:6], 0)
    )
    action = False
    if first.lower() in ("a", "an", "one", "the") and not clause and not _codeish(term):
        if _acronym(term.split()[0]) or first.lower() == "the" and not term[:1].isupper():
            question, answer = f"What is {shown}?", f"{term} is {rest}"
        elif first.lower() == "the":
            question, answer = f"What is the {shown}?", f"The {shown} is {rest}"
        else:  # defined as "a ...": a common noun, so no capital ("What is a recipe?")
            shown = shown if " " in term else _lower_first(term)
            article = _article(shown)
            question = f"What is {article} {shown}?"
            answer = f"{article.capitalize()} {shown} is {rest}"
    elif (first.lower() in _DETERMINERS or first[:1] in '`"' or first[:1].isdigit()) and (
        not clause
    ):
        question, answer = f"What is {shown}?", f"{term} is {rest}"
    elif _verb_base(first):  # "**verbose**: prints more output"
        question, answer, action = f"What does {shown} do?", f"{term} {rest}", True
    else:  # "**RAG**: retrieval-augmented generation, ...", "**Remove**: drop the rows"
        action = first[:1].islower() and first.lower() in _INSTRUCTION_VERBS
        question = f"What does {shown} do?" if action else f"What is {shown}?"
        answer = f"{term}: {rest}"
    pair = _Candidate("definition", question, _finish(answer, capital=False), body[0])
    return pair, term, action, body[used:]


def _bold_inline(block: _Block, sentences: list[str], text: str) -> list[_Candidate]:
    """'A reply without one is an **invalid answer**: it counts as wrong.'"""
    out = []
    for m in _BOLD_INLINE.finditer(block.text):
        term = _clean(m.group(1))
        for sentence in sentences:
            if term in sentence and not sentence.startswith(term):
                shown = _as_in_text(term, text)
                article = "" if _acronym(term.split()[0]) else f"{_article(shown)} "
                question = f"What is {article}{shown}?"
                out.append(_Candidate("definition", question, sentence, sentence))
                break
    return out


def _definition(sentence: str, text: str) -> _Candidate | None:
    """'X is a Y.' -> 'What is X?'; 'X is updated incrementally.' -> 'How is X updated?'"""
    m = re.match(
        r"((?:The |A |An )?[`\w][\w`@./'-]*(?: [\w`@./'-]+){0,6}?) (is|are) (\S+)(?: (.*))?$",
        sentence,
    )
    if not m or not sentence.endswith((".", "!")):
        return None
    subject, verb, first, tail = m.group(1), m.group(2), m.group(3), m.group(4) or ""
    words = subject.split()
    if words[0].lower() in _NOT_SUBJECTS or words[-1].lower() in _DETERMINERS:
        return None
    if words[0].lower() in _INSTRUCTION_VERBS and words[0][:1].isupper():  # "Read the ..."
        return None
    phrase = _subject_phrase(subject, text)
    rest = [first, *tail.split()]
    while len(rest) > 1 and rest[0].lower() in _ADVERBS:
        rest = rest[1:]
    head = rest[0]
    if head.lower() in ("not", "never", "no"):
        return None
    if head.lower() in _DETERMINERS or head[:1] in '`"' or head[:1].isdigit():
        return _Candidate("definition", f"What {verb} {phrase}?", sentence, sentence, phrase)
    if head[:1].isupper() and not head.endswith((",", ".")):  # "DPO is Direct Preference ..."
        return _Candidate("definition", f"What {verb} {phrase}?", sentence, sentence, phrase)
    if _is_participle(head) and not head.endswith((",", ".", ";")) and len(rest) > 1:
        nxt = rest[1].lower()
        if nxt in ("and", "but", "or"):
            return None
        participle = head.lower()
        if participle in ("called", "named") and (rest[1][:1] in '`"' or rest[1][:1].isupper()):
            question = f"What {verb} {phrase} {participle}?"
        elif nxt == "from":
            question = f"Where {verb} {phrase} {participle} from?"
        elif nxt in ("in", "into", "under", "inside"):
            question = f"Where {verb} {phrase} {participle}?"
        else:
            question = f"How {verb} {phrase} {participle}?"
        return _Candidate("definition", question, sentence, sentence, phrase)
    return None


def _last_code_before(sentence: str, end: int) -> str | None:
    spans = re.findall(r"`([^`]+)`", sentence[:end])
    return spans[-1] if spans else None


def _default(
    sentence: str, previous: str, term: str | None, text: str, action: bool
) -> _Candidate | None:
    """Sentences that state a default ('X defaults to N', 'N by default', 'the default is N')."""
    trigger = re.search(
        r"\bdefaults? to\b|\bby default\b|\b(?:the|its|their) default (?:is|are)\b|"
        r"\(default:? [^)]+\)|\bis the default\b|\bthe default (?:[\w`.-]+ ){1,3}is\b",
        sentence,
        re.I,
    )
    if not trigger:
        return None
    found = trigger.group().lower()
    key = _last_code_before(sentence, trigger.start())
    if found == "by default" and re.search(r"`\s*$", sentence[: trigger.start()]):
        # "..., `OPENAI_API_KEY` by default": that span is the value; the key comes before it
        spans = re.findall(r"`([^`]+)`", sentence[: trigger.start()])
        key = spans[-2] if len(spans) > 1 else None
    answer = sentence
    subject_less = re.match(r"(?i)(?:its|their|the) default (?:is|are)\b", sentence)
    if subject_less and not key:  # "Its default is N": the key is the previous sentence's
        earlier = re.findall(r"`([^`]+)`", previous)
        key = earlier[0] if earlier else None
    if m := re.fullmatch(r"(?i)the default ((?:[\w`.-]+ ){1,3})is", trigger.group()):
        noun = m.group(1).strip()
        if {w.lower() for w in noun.split()} & (_DETERMINERS | {"is", "are"}):
            return None
        return _Candidate("default", f"What is the default {noun}?", answer, sentence)
    if found.startswith("default") and key:  # "`target_modules` defaults to `all-linear`"
        return _Candidate("default", f"What does `{key}` default to?", answer, sentence)
    if found == "is the default":
        subject = sentence[: trigger.start()].strip()
        after = sentence[trigger.end() :].split()
        noun = after[0].strip(".,;:") if after and after[0][:1].isalpha() else ""
        tail = subject.split(", ")[-1]
        if not noun and re.fullmatch(r"(?:[Tt]he |[Aa]n? )(?:[\w-]+ )?[\w-]+", tail):
            noun = tail.split()[-1]  # "the embedded client is the default" -> client
        if noun and noun.lower() not in _DETERMINERS and not _verb_base(noun):
            return _Candidate("default", f"What is the default {noun}?", answer, sentence)
        return None
    if term:
        shown = _as_in_text(term, text)
        what = f"value of {shown}" if action or _codeish(term) else shown
        if subject_less:
            answer = f"The default {what} is" + sentence[subject_less.end() :]
        return _Candidate("default", f"What is the default {what}?", answer, sentence)
    if key:
        state = re.search(
            r"\b(?:is|are)(?: also)? (on|off|enabled|disabled|running|true|false) by default\b",
            sentence,
        )
        if state:
            question = f"What is the default state of `{key}`?"
            return _Candidate("default", question, answer, sentence)
        if subject_less:
            answer = f"The default value of `{key}` is" + sentence[subject_less.end() :]
        return _Candidate("default", f"What is the default value of `{key}`?", answer, sentence)
    if m := re.match(r"(?i)by default,? (.{3,60}?) (is|are) (\S+)", sentence):
        subject = _subject_phrase(m.group(1), text)
        if _is_participle(m.group(3)):
            question = f"What happens to {subject} by default?"
        else:
            question = f"What is the default behaviour of {subject}?"
        return _Candidate("default", question, answer, sentence)
    subject_state = re.match(
        r"((?:The |A |An )?[\w`-]+(?: [\w`-]+){0,3}) (?:is|are) (\w+) by default", sentence
    )
    if subject_state and _names_something(subject_state.group(1).split()):
        subject = _subject_phrase(subject_state.group(1), text)
        return _Candidate("default", f"What is the default state of {subject}?", answer, sentence)
    return None


def _noun_phrase_before(text: str) -> str | None:
    """The noun phrase that ends ``text`` ('... share the Dagster concurrency pool `gpu`' ->
    'the Dagster concurrency pool `gpu`')."""
    words = _words(text.rstrip(" ,.;"))[-6:]
    for i, word in enumerate(words):
        if word.lower() in ("the", "a", "an"):
            return " ".join(words[i:])
    return None


def _limit(sentence: str, previous: str, term: str | None, text: str) -> _Candidate | None:
    """Numbers with 'at most', 'at least', 'up to', 'exactly', 'limit of', 'maximum ... of'."""
    m = re.search(
        r"\b(at most|at least|up to|no more than|no fewer than|exactly) "
        r"(\d[\d,.]*|one|two|three|four|five|six|seven|eight|nine|ten)\b(?: ([a-zA-Z][\w-]*))?",
        sentence,
    )
    if m and (m.group(2)[0].isdigit() or m.group(1) == "exactly"):
        bound = "minimum" if m.group(1) in ("at least", "no fewer than") else "maximum"
        unit = (m.group(3) or "").lower()
        before = sentence[: m.start()].rstrip()
        if before.endswith(" of") and not unit.endswith("s"):  # "a similarity of at least 0.87"
            words = [w for w in before[:-3].split()[-2:] if w.lower() not in _DETERMINERS]
            if words and all(w.isalpha() for w in words):
                noun = " ".join(words).lower()
                return _Candidate("limit", f"What is the {bound} {noun}?", sentence, sentence)
        if unit.endswith("s") and unit not in ("is", "was", "has", "does", "this", "its"):
            parsed = _subject_and_verb(sentence)
            if m.group(1) == "exactly" and parsed:
                who, verb, _ = parsed
                question = f"How many {unit} does {_subject_phrase(who, text)} {verb}?"
                return _Candidate("limit", question, sentence, sentence)
            if term and m.group(1) != "exactly":
                shown = _as_in_text(term, text)
                article = "" if _codeish(term) or _acronym(term) else f"{_article(shown)} "
                question = f"What is the {bound} number of {unit} in {article}{shown}?"
                return _Candidate("limit", question, sentence, sentence)
    if m := re.search(r"\blimit (?:is|of) (\d+)", sentence):
        before = sentence[: m.start()]
        limited: str | None = None
        if w := re.search(r"(.*), whose $", before):
            limited = _noun_phrase_before(w.group(1))
        elif h := re.match(r"(.+?) (?:has|have) an? $", before):
            limited = _subject_phrase(h.group(1), text)
        elif re.match(r"(?i)its $", before):
            limited = _noun_phrase_before(previous)
        elif p := re.search(r"\b(?:[Tt]he|[Aa]) ([\w`-]+) $", before):
            return _Candidate("limit", f"What is the {p.group(1)} limit?", sentence, sentence)
        if limited:
            answer = f"{previous} {sentence}" if re.match(r"(?i)its\b", sentence) else sentence
            return _Candidate("limit", f"What is the limit of {limited}?", answer, sentence)
    m = re.search(
        r"\b[Tt]he (maximum|minimum) ([a-z]+(?: [a-z]+)?) of ((?:a|an|the|one|each|every) [\w`-]+)",
        sentence,
    )
    if m and re.search(r"\d", sentence):
        question = f"What is the {m.group(1)} {m.group(2)} of {m.group(3)}?"
        return _Candidate("limit", question, sentence, sentence)
    return None


def _setting(block: _Block, sentences: list[str], heading: str) -> list[_Candidate]:
    """A list item that opens with a `key`: what the key is or does, and which key does what."""
    if block.kind != "bullet" or not sentences:
        return []
    first = sentences[0]
    m = re.match(r"`([^`]{1,60})`(?: and `([^`]{1,60})`)?(:?) ?(.*)$", first)
    if not m:
        return []
    key, other, colon, rest = m.group(1), m.group(2), m.group(3), m.group(4)
    verb = rest.split(" ", 1)[0] if rest else ""
    if colon and rest.split(" ", 1)[0].lower() in ("a", "an", "the"):
        first = f"`{key}` is {rest}"  # "`prompt`: the instruction" -> "`prompt` is the ..."
    answer = _finish(first)
    if len(sentences) > 1 and re.match(r"(?:It|Its|The default)\b", sentences[1]):
        answer = f"{answer} {sentences[1]}"
    section = re.fullmatch(r"(?:[Tt]he )?`?([\w.-]+)`? section", _clean(heading))
    envvar = re.fullmatch(r"[A-Z][A-Z0-9_]{2,}", key)
    fileish = "/" in key or re.search(r"\.\w{2,4}$", key)
    if other:
        if re.match(r"(?:are|is) (?:\w+ )?\w+ed\b", rest):
            question = f"What happens to `{key}` and `{other}`?"
            return [_Candidate("parameter", question, answer, first)]
        return []
    if not colon and verb not in ("is", "are") and _verb_base(verb) is None:
        return []  # "`merged` against `base`, to see whether ..." names no property
    if fileish:
        return [_Candidate("parameter", f"What is `{key}`?", answer, first)]
    if envvar:
        question = f"What is the `{key}` environment variable for?"
    elif re.match(r"is either\b", rest):
        question = f"What can `{key}` be set to?"
    elif section:
        question = f"What does `{key}` do in the {section.group(1)} section?"
    elif " " in key or _verb_base(verb):
        question = f"What does `{key}` do?"
    else:
        question = f"What is `{key}`?"
    out = [_Candidate("parameter", question, answer, first)]
    lookup = re.match(
        r"(is|sets|names|chooses|selects|controls|holds|gives) "
        r"((?:the|how|which|what|whether) [^;`]{8,100}?)[.;]?$",
        rest.split("; ")[0],
    )
    if lookup and not colon:
        what = "environment variable" if envvar else "setting"
        does = "sets" if lookup.group(1) == "is" else lookup.group(1)
        question = f"Which {what} {does} {lookup.group(2).rstrip('.')}?"
        out.append(_Candidate("parameter", question, answer, first))
    return out


def _table(block: _Block) -> list[_Candidate]:
    """Rows of a markdown table: the first column names the thing, the others describe it."""
    rows = [
        [_clean(c) for c in line.strip().strip("|").split("|")]
        for line in block.text.splitlines()
        if not _TABLE_RULE.match(line)
    ]
    if len(rows) < 2 or len(rows[0]) < 2:
        return []
    header, out = [h.lower() for h in rows[0]], []
    does = re.search(r"what it does|description|purpose|meaning|effect", header[1])
    for row in rows[1:]:
        if len(row) != len(header) or not row[0] or not all(row[1:]):
            continue
        name = f"the {row[0]} {header[0]}" if re.fullmatch(r"[a-z]+", header[0]) else row[0]
        if does and len(header) == 2:
            question, answer = f"What does {name} do?", f"{row[0]}: {row[1]}"
        elif len(header) == 2:
            question = f"What is the {header[1]} of {name}?"
            answer = f"The {header[1]} of {name} is {row[1]}"
        else:
            cols = header[1:]
            question = f"What are the {' and '.join(cols)} for {name}?"
            answer = f"For {name}: " + ", ".join(
                f"{h} {v}" for h, v in zip(cols, row[1:], strict=True)
            )
        out.append(_Candidate("parameter", question, _finish(answer), f"{block.text}|{row[0]}"))
    return out


def _is_shell(block: _Block) -> bool:
    lines = [ln for ln in block.text.splitlines() if ln.strip()]
    prompted = bool(lines) and all(ln.lstrip().startswith("$ ") for ln in lines)
    return block.lang in _SHELL_LANGS or prompted


def _command(block: _Block, heading: str) -> _Candidate | None:
    """A shell code block: 'How do I <what the text before it or the heading says>?', answered
    by the commands (a '$ ' prompt and comment lines dropped)."""
    commands = [
        re.sub(r"^\s*\$ ", "", ln).rstrip()
        for ln in block.text.splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ][:6]
    if not commands or not block.whole:
        return None
    task = (_instruction(block.lead) if block.lead else None) or _heading_task(heading)
    if not task:
        return None
    return _Candidate("command", f"How do I {task}?", "\n".join(commands), block.text)


def _inline_command(sentence: str) -> _Candidate | None:
    """'run `cmd` to X' -> 'How do I X?'; 're-run `cmd`, which installs Y' -> 'Which command
    installs Y?'"""
    run = r"\b(?:[Rr]un|[Rr]e-run|[Tt]ype|[Ee]xecute) `([^`]+)`"
    if m := re.search(run + r" to ([^.;:,]{6,100})", sentence):
        question = f"How do I {_your_to_my(m.group(2))}?"
        return _Candidate("command", question, _finish(sentence), sentence)
    if m := re.search(run + r", which (\w+s) ((?:`[^`]*`|[^.;`]){6,120})", sentence):
        question = f"Which command {m.group(2)} {m.group(3)}?"
        answer = f"`{m.group(1)}` {m.group(2)} {m.group(3)}."
        return _Candidate("command", question, answer, sentence)
    return None


def _steps(items: list[_Block], heading: str, doc_title: str) -> _Candidate | None:
    """A numbered list: 'What are the steps to <heading>?', answered by the steps."""
    if len(items) < 2:
        return None
    generic = _clean(heading).lower() in ("steps", "procedure", "instructions", "usage")
    topic = doc_title if generic or heading == doc_title else heading
    task = _heading_task(topic)
    phrase = f"to {task}" if task else f"for {_heading_phrase(topic)}"
    steps = [
        f"{n}. {_finish((_sentences(item.text) or [_clean(item.text)])[0])}"
        for n, item in enumerate(items[:10], 1)
    ]
    return _Candidate("steps", f"What are the steps {phrase}?", "\n".join(steps), items[0].text)


def _example(block: _Block, heading: str, doc_title: str) -> _Candidate | None:
    """A whole, short non-shell code block (a config, a snippet): 'Can you show an example of
    <heading>?', answered by the block as written."""
    lines = block.text.strip("\n").splitlines()
    if not block.whole or not lines or len(lines) > _EXAMPLE_LINES:
        return None
    if len(block.text) > _EXAMPLE_CHARS:
        return None
    topic = _heading_phrase(heading)
    if re.search(r"(?i)\bexample\b", heading):  # "A trimmed example": of what? The page's
        question = f"Can you show {topic} for {_title_phrase(doc_title)}?"
    else:
        question = f"Can you show an example of {topic}?"
    return _Candidate("example", question, "\n".join(ln.rstrip() for ln in lines), block.text)


def _statement(sentence: str, next_sentence: str, text: str) -> _Candidate | None:
    """'The asset turns every chunk into pairs.' -> 'What does the asset do?'"""
    parsed = _subject_and_verb(sentence)
    if not parsed or not sentence.endswith("."):
        return None
    subject, verb, rest = parsed
    phrase = _subject_phrase(subject, text)
    preposition = rest.split(" ", 1)[0].lower()
    if verb == "have" and preposition == "to":
        return None  # "has to run": an obligation, not a possession
    if preposition == "from":
        question = f"Where does {phrase} {verb} from?"
    elif preposition in ("with", "on", "to", "into"):  # "relies on", "embeds with"
        question = f"What does {phrase} {verb} {preposition}?"
    else:
        question = f"What does {phrase} {verb if verb in _OBJECT_VERBS else 'do'}?"
    answer = sentence
    if next_sentence and len(sentence.split()) < 12 and not next_sentence.endswith(":"):
        answer = f"{sentence} {next_sentence}"
    return _Candidate(_STATEMENT, question, answer, sentence, phrase)


def _heading_question(title: str) -> str:
    """A heading worded as an indirect question, asked directly: 'Why the data is general' ->
    'Why is the data general?', 'What every row records' -> 'What does every row record?'."""
    wh, _, rest = title.partition(" ")
    words = rest.split()
    for i, word in enumerate(words):
        if word in ("is", "are") and i > 0:
            return " ".join([wh, word, *words[:i], *words[i + 1 :]]) + "?"
        base = _verb_base(word)
        if base and i > 0 and words[0].lower() in _DETERMINERS:
            return " ".join([wh, "does", *words[:i], base, *words[i + 1 :]]) + "?"
    return f"{title}?"  # "What went wrong with the published test?", "Where to go next?"


def _stands_alone(sentence: str) -> bool:
    """Whether a sentence makes sense without the one before ('It is ...' does not; 'This
    glossary defines ...' does)."""
    words = sentence.lower().split()
    if words[0] in ("it", "its", "they", "their", "them", "he", "she", "his", "her"):
        return False
    if words[0] in ("this", "these", "those", "that", "both", "so", "but", "and"):
        return len(words) > 1 and words[1] not in _FINITE and not _verb_base(words[1])
    return True


def _fallback(blocks: list[_Block], heading: str, doc_title: str) -> _Candidate | None:
    """For a chunk with no fact the miners know: its first sentences, asked about specifically."""
    prose = [
        s
        for b in blocks
        if b.kind in ("para", "bullet")
        for s in _sentences(b.text, cut_head=True, cut_tail=True)
        if not s.endswith(":") and _stands_alone(s)
    ]
    if not prose:
        return None
    answer = " ".join(prose[:2] if len(prose[0].split()) < 15 else prose[:1])
    title = _clean(heading).rstrip(".:?")
    if re.match(r"(?i)(?:what|why|how|when|where|which|who)\b", title):
        question = _heading_question(title)
    elif heading != doc_title and _PROBLEM_WORDS.search(title):
        question = f"What should I do if {_lower_first(title)}?"
    elif heading != doc_title:
        question = f"What does {_title_phrase(doc_title)} say about {_heading_phrase(heading)}?"
    else:
        question = f"What is {_title_phrase(doc_title)} about?"
    return _Candidate("fallback", question, answer, prose[0])


def _candidates(text: str, heading: str, doc_title: str) -> list[_Candidate]:
    """Every fact the miners find in one chunk, in document order."""
    out: list[_Candidate] = []
    blocks = _parse_blocks(text)
    numbered: list[_Block] = []
    for i, block in enumerate(blocks):
        if block.kind == "numbered":
            numbered.append(block)
            if i + 1 < len(blocks) and blocks[i + 1].kind == "numbered":
                continue
            if step := _steps(numbered, heading, doc_title):
                out.append(step)
            numbered = []
            continue
        if block.kind == "code":
            shell = _is_shell(block)
            found = _command(block, heading) if shell else _example(block, heading, doc_title)
            out += [found] if found else []
            continue
        if block.kind == "table":
            out += _table(block)
            continue
        last = i == len(blocks) - 1
        sentences = _sentences(block.text, block.kind == "para" and i == 0, last)
        term, action = None, False
        if lead := _bold_lead(block, text, last):
            pair, term, action, after = lead
            out.append(pair)
            # The rest of the block is read after the definition as rewritten for its answer.
            sentences = [*_SENTENCE_END.split(pair.answer), *after]
        else:
            out += _bold_inline(block, sentences, text)
        out += _setting(block, sentences, heading)
        keyed = block.kind == "bullet" and bool(sentences) and sentences[0].startswith("`")
        for n, sentence in enumerate(sentences):
            previous = sentences[n - 1] if n else ""
            following = sentences[n + 1] if n + 1 < len(sentences) else ""
            first_of_term = term is not None and n == 0
            for found in (
                None if first_of_term or keyed and n == 0 else _definition(sentence, text),
                _default(sentence, previous, term, text, action),
                _limit(sentence, previous, term, text),
                _inline_command(sentence),
                None if first_of_term else _statement(sentence, following, text),
            ):
                if found:
                    out.append(found)
    return [_in_context(c, doc_title) for c in out]


def _in_context(c: _Candidate, doc_title: str) -> _Candidate:
    """'How is the index updated?' names no index: 'In the vector index, how is ...?'. A
    question about 'the <one word>' gets its page's title, so it can be answered on its own."""
    if not re.fullmatch(r"(?:the|a|an) [a-z][a-z-]*", c.subject):
        return c
    if c.subject.split()[1] in doc_title.lower():
        return c  # "What does the asset do?" on a page titled "... asset" is already specific
    question = f"In {_title_phrase(doc_title)}, {c.question[0].lower()}{c.question[1:]}"
    return _Candidate(c.kind, question, c.answer, c.source, c.subject)


def generate_offline_qa(chunk: dict[str, Any], doc_title: str, limit: int) -> list[dict[str, str]]:
    """Mine question/answer pairs that state facts from one chunk's markdown (no LLM).

    Definitions ("**X**: ...", "X is a ..."), defaults, limits, settings in lists and tables,
    commands in shell blocks, numbered steps and short examples each become a question a user
    would ask; the answer is the sentence or two that state the fact, lightly cleaned, or the
    command, steps or example itself. Pairs are picked kind by kind in that order, one per fact
    before a second question about the same fact, then plain statements ("What does X do?")
    fill what is left; a chunk where nothing matches gets one question about its first
    sentences. Deterministic: the same chunk always gives the same pairs.

    Args:
        chunk: A chunk record (``text``, ``heading_path``).
        doc_title: The document's title, used where a question needs the page's context.
        limit: Maximum number of pairs.

    Returns:
        ``[{"question", "answer", "kind"}]``, answers taken from the chunk.
    """
    text = chunk["text"]
    heading = chunk["heading_path"][-1] if chunk["heading_path"] else doc_title
    found = _candidates(text, heading, doc_title)
    pairs: list[dict[str, str]] = []
    asked: set[str] = set()
    used: set[str] = set()

    def take(c: _Candidate) -> None:
        pairs.append({"question": c.question, "answer": c.answer, "kind": c.kind})
        asked.add(c.question.lower())
        used.add(c.source)

    def fits(c: _Candidate, fresh: bool) -> bool:
        return (
            bool(c.answer) and c.question.lower() not in asked and not (fresh and c.source in used)
        )

    # Kind by kind, one candidate each per round: a chunk with five settings and a definition
    # yields the definition and two settings, not the first three settings.
    for fresh in (True, False):
        picked = True
        while picked and len(pairs) < limit:
            picked = False
            for kind in _KIND_ORDER:
                c = next((c for c in found if c.kind == kind and fits(c, fresh)), None)
                if c is not None and len(pairs) < limit:
                    take(c)
                    picked = True
    for c in found:
        if c.kind == _STATEMENT and len(pairs) < limit and fits(c, fresh=True):
            take(c)
    if not pairs and limit > 0:
        fallback = _fallback(_parse_blocks(text), heading, doc_title)
        if fallback is not None:
            take(fallback)
    return pairs
