"""``lakn data build`` (RML-LAMA-style facts from an mParaRel checkout) and ``lakn data known``
(which facts the model knows: rank and probability of the answer for every query)."""

from __future__ import annotations

from ._common import comma_list, positive_int

__all__ = ["register"]

BUILD = """Build RML-LAMA-style facts from a local mParaRel checkout (git clone https://github.com/coastalcph/mpararel):
fills each subject into every paraphrased template, keeps [Y], marks the causal templates (slot last) and
writes OUT/facts.jsonl, OUT/DATASHEET.md (facts x languages x paraphrases, sources, license, everything
skipped and why) and OUT/build.json. The data is CC BY-NC-SA 4.0: lakn ships the builder, not the data."""

KNOWN = """For every fact, language and query of DATA: the rank and probability of the answer's first token
and the full answer's probability under the model, in batches. Writes a table (FILE, .jsonl or .csv) that
`lakn localize --known FILE` and `lakn evaluate DIR --known FILE` read to keep the queries the model knows
(first answer token ranked below --top-k)."""


def register(sub) -> None:
    data = sub.add_parser("data", help="build RML-LAMA-style facts from mParaRel; find which facts a model knows",
                          description=__doc__)
    cmds = data.add_subparsers(dest="data_command", required=True, metavar="{build,known}")

    p = cmds.add_parser("build", help="RML-LAMA-style facts from an mParaRel checkout", description=BUILD)
    p.add_argument("src", help="mParaRel checkout (holds data/mpararel_reviewed/{patterns,tuples}/LANG/REL.jsonl)")
    p.add_argument("out", help="output folder (facts.jsonl, DATASHEET.md, build.json) or a .jsonl file")
    p.add_argument("--languages", required=True,
                   help="lakn codes or mParaRel folders, comma separated (zh = zh-hans; zh-hant is written as zh), "
                        "or 'all'")
    p.add_argument("--relations", type=comma_list, default=None, help="relation ids, comma separated (default: all)")
    p.add_argument("--min-languages", type=positive_int, default=None, help="languages a fact needs (default: all)")
    p.add_argument("--min-paraphrases", type=positive_int, default=2,
                   help="queries a (fact, language) needs (default 2; causal ones only unless --all-queries-count)")
    p.add_argument("--all-queries-count", action="store_true",
                   help="count every query towards --min-paraphrases, not only causal ones (slot last)")
    p.add_argument("--required-languages", type=comma_list, default=None,
                   help="languages every fact must have, comma separated")
    p.add_argument("--per-relation-cap", type=positive_int, default=None,
                   help="at most N facts per relation (a seeded sample; default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-relation sample (default 0)")
    p.add_argument("--human-checked-only", action="store_true", help="keep only human-checked templates")
    p.add_argument("--skip-malformed", action="store_true",
                   help="skip and count malformed input lines instead of stopping at the first")
    p.add_argument("--overwrite", action="store_true", help="replace an existing facts file")
    p.set_defaults(handler=run_build)

    p = cmds.add_parser("known", help="rank and probability of the answer for every query: which facts are known",
                        description=KNOWN)
    p.add_argument("data", help="facts file (.jsonl / .json) or 'demo'")
    p.add_argument("--out", required=True, help="table to write (.jsonl, or .csv)")
    p.add_argument("--model", default=None, help="model name or path (default: the embedded Gemma 3 270M)")
    p.add_argument("--languages", type=comma_list, default=None,
                   help="languages, comma separated (default: each fact's own)")
    p.add_argument("--top-k", type=positive_int, default=10,
                   help="a query is known when its first answer token ranks below this (default 10)")
    p.add_argument("--max-queries", type=positive_int, default=None,
                   help="queries per fact and language, the first ones (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--first-token-only", action="store_true",
                   help="score only the first answer token (faster; answer_prob = the first token's)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cpu)")
    p.set_defaults(handler=run_known)


def run_build(args) -> int:
    from ..rml import build_rml

    report = build_rml(
        args.src, args.out, languages=args.languages, relations=args.relations, min_languages=args.min_languages,
        min_paraphrases=args.min_paraphrases, causal=not args.all_queries_count,
        required_languages=args.required_languages, per_relation_cap=args.per_relation_cap, seed=args.seed,
        human_checked_only=args.human_checked_only, on_malformed="skip" if args.skip_malformed else "raise",
        overwrite=args.overwrite,
    )
    print(report.summary())
    return 0


def run_known(args) -> int:
    from ..facts import load_facts
    from ..known import select_known
    from ..models import load_model

    facts = load_facts(args.data)
    model = load_model(args.model, device=args.device, verbose=True)
    table = select_known(model, facts, languages=args.languages, top_k=args.top_k, max_queries=args.max_queries,
                         batch_size=args.batch_size, full_answer=not args.first_token_only, data=str(args.data),
                         progress=True)
    path = table.save(args.out)
    print(table.summary().to_string(index=False))
    c = table.config
    print(f"{c['n_known']}/{c['n_queries']} queries known (first answer token in the top {c['top_k']}); "
          f"{len(table.known_fact_ids())} of {c['n_facts']} facts known in at least one language; "
          f"{c['queries_per_second']} queries/s; {len(c['skipped'])} queries could not be encoded")
    print(f"written: {path}")
    return 0
