"""How many demo facts the embedded default answers, per language (answer's first token in the top k).

    python benchmarks/demo_accuracy.py [--data demo] [--model NAME] [--top-k 10]

A fact counts as answered in a language when at least one of its paraphrases ranks the answer's
first token within the top k; the table also gives the share of queries answered and mean P(answer)
(geometric mean over answer tokens, teacher forced).
"""

import argparse
import time
from collections import defaultdict

import lakn
from lakn.probability import batch_answer_probability
from lakn.tokens import encode_query


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="demo")
    parser.add_argument("--model", default=None)
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()
    t0 = time.perf_counter()
    model = lakn.load_model(args.model)
    facts = lakn.load_facts(args.data)
    langs = lakn.facts.common_languages(facts)
    fact_hit = defaultdict(int)
    query_hit = defaultdict(int)
    n_queries = defaultdict(int)
    prob = defaultdict(float)
    for lang in langs:
        encoded, owner = [], []
        for fact in facts:
            for q in fact.queries(lang):
                encoded.append(encode_query(model, q))
                owner.append(fact.fact_id)
        probs, ranks = batch_answer_probability(model, encoded, batch_size=32)
        best: dict[str, int] = {}
        for fid, r in zip(owner, ranks.tolist()):
            best[fid] = min(best.get(fid, r), r)
        n_queries[lang] = len(encoded)
        query_hit[lang] = int((ranks < args.top_k).sum())
        fact_hit[lang] = sum(r < args.top_k for r in best.values())
        prob[lang] = float(probs.sum())
    print(f"model: {lakn.models.model_name(model)}  data: {args.data}  facts: {len(facts)}  top-k: {args.top_k}")
    print("| language | facts answered | queries answered | mean P(answer) |")
    print("| --- | --- | --- | --- |")
    for lang in langs:
        print(f"| {lang} | {fact_hit[lang]}/{len(facts)} ({fact_hit[lang] / len(facts):.0%}) | "
              f"{query_hit[lang]}/{n_queries[lang]} ({query_hit[lang] / n_queries[lang]:.0%}) | "
              f"{prob[lang] / n_queries[lang]:.3f} |")
    total_f, total_q = sum(fact_hit.values()), sum(query_hit.values())
    print(f"| all | {total_f}/{len(facts) * len(langs)} ({total_f / (len(facts) * len(langs)):.0%}) | "
          f"{total_q}/{sum(n_queries.values())} ({total_q / sum(n_queries.values()):.0%}) | |")
    print(f"time: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
