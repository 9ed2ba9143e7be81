"""A `transformers.pipeline` task for context and questions, registered as ``"raggedkv-context-questions"``:

    import raggedkv.engine.qa_pipeline  # registers the task
    qa = transformers.pipeline("raggedkv-context-questions", model=model, tokenizer=tokenizer,
                               method="snapkv", kv_size=64)
    qa(context, questions=["Who?", "When?"])   # [{"question": "Who?", "answer": "..."}, ...]

Each call is `Engine.generate(context, questions=...)` (`questions.py`): the context is compressed once and each
question answered from its own copy. Pipeline keywords: `method`, `head_scores`, `backend` (the Engine's, fixed
when the pipeline is built) and `question`/`questions`, `kv_size`, `max_new_tokens`, `temperature`, `top_p`,
`seed`, `chat_template` (per call or at construction).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForCausalLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .generate import Engine

TASK = "raggedkv-context-questions"
ENGINE_KEYWORDS = ("method", "head_scores", "backend")
CALL_KEYWORDS = ("question", "questions", "kv_size", "max_new_tokens", "temperature", "top_p", "seed",
                 "chat_template")


class ContextQuestionsPipeline(Pipeline):
    """Answers questions about one context string per input with a compressed cache (see the module docstring)."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict, dict, dict]:
        unknown = sorted(set(kwargs) - set(ENGINE_KEYWORDS) - set(CALL_KEYWORDS))
        if unknown:
            raise ValueError(f"{TASK} takes {ENGINE_KEYWORDS + CALL_KEYWORDS}, got unknown keywords {unknown}")
        engine_params = {k: kwargs[k] for k in ENGINE_KEYWORDS if k in kwargs}
        if engine_params:
            if getattr(self, "engine", None) is not None:
                raise ValueError(f"{sorted(engine_params)} are fixed when the pipeline is built, not per call")
            self.engine = Engine.from_model(self.model, self.tokenizer, **engine_params)
        return {}, {k: kwargs[k] for k in CALL_KEYWORDS if k in kwargs}, {}

    def preprocess(self, context: str) -> dict:
        return {"context": context}

    def _forward(self, inputs: dict, **call_params: Any) -> dict:
        if getattr(self, "engine", None) is None:
            self.engine = Engine.from_model(self.model, self.tokenizer)
        if "question" not in call_params and "questions" not in call_params:
            raise ValueError(f"{TASK} needs question= or questions= with the context")
        asked = call_params.get("questions") or [call_params["question"]]
        results = self.engine.generate(inputs["context"], **call_params)
        results = [results] if "questions" not in call_params else results
        return {"answers": [{"question": q, "answer": r.text} for q, r in zip(asked, results, strict=True)],
                "single": "questions" not in call_params}

    def postprocess(self, outputs: dict) -> dict | list[dict]:
        return outputs["answers"][0] if outputs["single"] else outputs["answers"]


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=ContextQuestionsPipeline, pt_model=AutoModelForCausalLM)
