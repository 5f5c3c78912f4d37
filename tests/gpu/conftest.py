import sys
from pathlib import Path

# the helpers next to these tests (agreement.py, attention_cases.py) import as plain modules
sys.path.insert(0, str(Path(__file__).parent))
