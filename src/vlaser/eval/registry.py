"""The names the command line offers as choices: the benchmarks, the folders their data needs, the prompt
styles and the OpenAI-compatible servers vlaser addresses.

A module that imports nothing, so ``vlaser --help`` and a usage error answer without importing the benchmarks'
code, numpy or torch; the modules that use the names import them from here.
"""

#: name -> "module:Class", imported on first use
REGISTRY: dict[str, str] = {
    "where2place": "vlaser.eval.benchmarks.where2place:Where2Place",
    "point_bench": "vlaser.eval.benchmarks.point_bench:PointBench",
    "refspatial": "vlaser.eval.benchmarks.refspatial:RefSpatial",
    "pixmo_points": "vlaser.eval.benchmarks.pixmo_points:PixmoPoints",
    "paco_lvis": "vlaser.eval.benchmarks.paco_lvis:PacoLvis",
    "mmsi_bench": "vlaser.eval.benchmarks.mmsi_bench:MMSIBench",
    "erqa": "vlaser.eval.benchmarks.erqa:ERQA",
    "egoplan_bench2": "vlaser.eval.benchmarks.egoplan_bench2:EgoPlanBench2",
    "vsi_bench": "vlaser.eval.benchmarks.vsi_bench:VSIBench",
    "vlabench": "vlaser.eval.benchmarks.vlabench:VLABench",
}

#: ``--prompt``: vlaser's prompt (the seed's point prefix for pointing) or the benchmark's official one.
PROMPT_STYLES = ("vlaser", "official")

#: what ``DIR/<name>/`` must hold, as said when the folder is absent
LAYOUTS: dict[str, str] = {
    "where2place": "RoboPoint's point_questions.jsonl + images/ + masks/, or FlagEval's Where2Place parquet",
    "point_bench": "PointArena's data.json + images/<category>/ + masks/",
    "paco_lvis": "Vlaser's PACO-LVIS JSONL (+ images), or PACO's paco_lvis_v1_*.json + images/",
    "pixmo_points": "Vlaser's Pixmo-Points JSONL (+ images); molmo protocol: the pixmo-points-eval parquet + "
                    "images/<sha256>.*",
    "refspatial": "Location/, Placement/, Unseen/ with question.json + image/ + mask/, or the RefSpatial-Bench "
                  "parquet splits",
    "mmsi_bench": "MMSI_Bench.parquet",
    "erqa": "the official erqa.tfrecord, or FlagEval's ERQA parquet",
    "egoplan_bench2": "EgoPlan-Bench2.json + the Ego4D clips in videos/",
    "vsi_bench": "VSI-Bench's test-*.parquet + <dataset>/<scene_name>.mp4",
    "vlabench": "{Dimension}/{task}/example{N}/ folders of VLABench/vlm_evaluation_v1.0",
}
#: benchmarks whose results come from their own harness, imported into OUT beforehand
IMPORTED: dict[str, str] = {"eb_alfred": "EB-ALFRED", "eb_habitat": "EB-Habitat"}
#: the kinds of server, ``--api-engine``'s choices (``to_payload`` shapes a request for each); ``auto`` asks the server
SERVERS = ("auto", "vllm", "lmdeploy", "vlaser", "openai")
