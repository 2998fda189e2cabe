"""How many demo facts the embedded default answers, per language (answer's first token in the top k).

    python benchmarks/demo_accuracy.py [--data demo] [--model NAME] [--top-k 10]

A fact counts as answered in a language when at least one of its paraphrases ranks the answer's
first token within the top k; the table also gives the share of queries answered and mean P(answer).
"""

import argparse
import time
from collections import defaultdict

import torch

import lakn
from lakn.tokens import answer_probabilities, encode_query


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
    torch.set_grad_enabled(False)
    for fact in facts:
        for lang in langs:
            ranks = []
            for q in fact.queries(lang):
                stats = answer_probabilities(model, encode_query(model, q))
                ranks.append(stats.rank)
                prob[lang] += stats.token_probs[0].item()
            n_queries[lang] += len(ranks)
            query_hit[lang] += sum(r < args.top_k for r in ranks)
            fact_hit[lang] += min(ranks) < args.top_k
    print(f"model: {lakn.models.model_name(model)}  data: {args.data}  facts: {len(facts)}  top-k: {args.top_k}")
    print(f"| language | facts answered | queries answered | mean P(first answer token) |")
    print(f"| --- | --- | --- | --- |")
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
