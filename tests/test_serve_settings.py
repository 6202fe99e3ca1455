"""The server's settings are one limits object and one set of default decoding parameters: ``vlaser serve``'s
flags and ``create_app``'s keyword form build the same ones, and the server's own defaults fit inside its caps."""

import argparse
from pathlib import Path

from vlaser.cli import serve as cli_serve
from vlaser.inference.types import GenerationParams
from vlaser.serve.app import keyword_settings
from vlaser.serve.messages import MediaLimits


def _args(line: str):
    parser = argparse.ArgumentParser()
    cli_serve.add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", "--model", "m", *line.split()])


def _from_flags(args):
    defaults = GenerationParams(args.max_new_tokens, keep_grounding_tokens=args.keep_grounding_tokens)
    return cli_serve.limits(args).around(defaults, args.max_tiles), args.max_tiles


def test_flags_and_keywords_build_the_same_settings(tmp_path):
    assert _from_flags(_args("")) == (keyword_settings()[0].around(GenerationParams(), None), None)
    args = _args(f"--max-num 50 --max-num-cap 40 --max-tokens 100 --max-tokens-cap 200 --max-images 3 "
                 f"--max-pixels 900 --allow-remote-media --allow-private-media-hosts --allow-local-media {tmp_path} "
                 "--keep-grounding-tokens")
    limits, defaults, max_tiles = keyword_settings(
        default_max_tokens=100, max_tokens_cap=200, max_images=3, max_pixels=900, allow_remote_media=True,
        allow_private_media_hosts=True, allow_local_media=tmp_path, default_max_tiles=50, max_tiles_cap=40,
        keep_grounding_tokens=True)
    assert _from_flags(args) == (limits.around(defaults, max_tiles), 50)
    assert limits.local_root == Path(tmp_path) and defaults.keep_grounding_tokens


def test_the_defaults_fit_inside_the_caps():
    limits = MediaLimits(max_new_tokens=10, max_tiles=4)
    assert limits.around(GenerationParams(max_new_tokens=50), 6) == (  # the default tiles may be asked for
        MediaLimits(max_new_tokens=10, max_tiles=6), GenerationParams(max_new_tokens=10))
    assert limits.around(GenerationParams(max_new_tokens=5), 2) == (limits, GenerationParams(max_new_tokens=5))
    assert MediaLimits().around(GenerationParams(), 7) == (MediaLimits(), GenerationParams())  # no caps: unchanged
