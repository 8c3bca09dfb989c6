"""bfcl_ext: run the Berkeley Function Calling Leaderboard against any OpenAI-compatible server."""

__version__ = "0.1.0"
