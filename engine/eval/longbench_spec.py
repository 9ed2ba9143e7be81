"""The LongBench protocol for its 16 English datasets: prompt template, answer length, metric and chat handling.

Templates are LongBench's official ones (its `dataset2prompt` config), filled with an example's `context` and
`input`; answer lengths are its `dataset2maxlen`; metrics are those of its `eval.py` (see `metrics.py`). Chat
wrapping follows KVCache-Factory's current runner: the model's chat template is applied after truncation except on
the few-shot and code datasets, where the raw template works better for chat models. samsum also stops at a newline.
"""

from __future__ import annotations

from dataclasses import dataclass

_NARRATIVE_RULE = (
    "Now, answer the question based on the story as concisely as you can, using a single phrase if possible. "
    "Do not provide any explanation."
)
_QASPER_RULES = (
    "as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered "
    'based on the information in the article, write "unanswerable". If the question is a yes/no question, answer '
    '"yes", "no", or "unanswerable". Do not provide any explanation.'
)
_MULTI_DOC_RULE = (
    "Answer the question based on the given passages. Only give me the answer and do not output any other words."
)
_MULTI_DOC = (
    f"{_MULTI_DOC_RULE}\n\nThe following are given passages.\n{{context}}\n\n{_MULTI_DOC_RULE}\n\n"
    "Question: {input}\nAnswer:"
)
_CODE = "Please complete the code given below. \n{context}"


@dataclass(frozen=True, slots=True)
class Task:
    """One LongBench dataset's protocol.

    template: format string with `{context}` and `{input}` placeholders.
    max_new_tokens: answer length.
    metric: a key of `metrics.METRICS`.
    chat: wrap the (truncated) prompt in the model's chat template.
    first_line: score only the prediction's first line (few-shot datasets).
    stop_at_newline: stop generating at the first newline (samsum).
    """

    template: str
    max_new_tokens: int
    metric: str
    chat: bool = True
    first_line: bool = False
    stop_at_newline: bool = False


TASKS: dict[str, Task] = {
    "narrativeqa": Task(
        "You are given a story, which can be either a novel or a movie script, and a question. Answer the question "
        "as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\n"
        f"Story: {{context}}\n\n{_NARRATIVE_RULE}\n\nQuestion: {{input}}\n\nAnswer:",
        128,
        "qa_f1",
    ),
    "qasper": Task(
        f"You are given a scientific article and a question. Answer the question {_QASPER_RULES}\n\n"
        f"Article: {{context}}\n\n Answer the question based on the above article {_QASPER_RULES}\n\n"
        "Question: {input}\n\nAnswer:",
        128,
        "qa_f1",
    ),
    "multifieldqa_en": Task(
        "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on "
        "the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        64,
        "qa_f1",
    ),
    "hotpotqa": Task(_MULTI_DOC, 32, "qa_f1"),
    "2wikimqa": Task(_MULTI_DOC, 32, "qa_f1"),
    "musique": Task(_MULTI_DOC, 32, "qa_f1"),
    "gov_report": Task(
        "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n"
        "{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
        512,
        "rouge_l",
    ),
    "qmsum": Task(
        "You are given a meeting transcript and a query containing a question or instruction. Answer the query in "
        "one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting "
        "transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
        512,
        "rouge_l",
    ),
    "multi_news": Task(
        "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\n"
        "Now, write a one-page summary of all the news.\n\nSummary:",
        512,
        "rouge_l",
    ),
    "trec": Task(
        "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
        64,
        "classification",
        chat=False,
        first_line=True,
    ),
    "triviaqa": Task(
        "Answer the question based on the given passage. Only give me the answer and do not output any other words. "
        "The following are some examples.\n\n{context}\n\n{input}",
        32,
        "qa_f1",
        chat=False,
        first_line=True,
    ),
    "samsum": Task(
        "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
        128,
        "rouge_l",
        chat=False,
        first_line=True,
        stop_at_newline=True,
    ),
    "passage_count": Task(
        "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully "
        "read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In "
        "other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final "
        "count of unique paragraphs after removing duplicates. The output format should only contain the number, "
        "such as 1, 2, 3, and so on.\n\nThe final answer is: ",
        32,
        "count",
    ),
    "passage_retrieval_en": Task(
        "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the "
        "abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of "
        'the paragraph that the abstract is from. The answer format must be like "Paragraph 1", "Paragraph 2", '
        "etc.\n\nThe answer is: ",
        32,
        "retrieval",
    ),
    "lcc": Task(f"{_CODE}Next line of code:\n", 64, "code_sim", chat=False),
    "repobench-p": Task(f"{_CODE}{{input}}Next line of code:\n", 64, "code_sim", chat=False),
}
