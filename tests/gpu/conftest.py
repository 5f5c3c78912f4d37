import sys
from pathlib import Path

# the helpers next to these tests (agreement.py, tiny_configs.py) import as plain modules
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))       # tests/attention_cases.py, shared with CPU tests
