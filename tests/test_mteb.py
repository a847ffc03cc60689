"""The MTEB adapter's command line on a local BEIR folder (offline)."""
import json
import subprocess
import sys

from causalneg.data import write_beir


def test_cli_scores_a_beir_folder(tmp_path):
    corpus = {f'd{i}': {'title': t, 'text': f'{t} is described here in a few words.'} for i, t in
              enumerate(['Paris', 'Berlin', 'Rome', 'Madrid', 'Lisbon', 'Vienna'])}
    corpus['fruit'] = {'title': 'Banana', 'text': 'A banana is an elongated, edible fruit.'}
    queries = {'q0': 'capital of France', 'q1': 'capital of Germany', 'q2': 'capital of Italy'}
    write_beir(tmp_path / 'beir', corpus, queries, {'test': {'q0': {'d0': 1}, 'q1': {'d1': 1}, 'q2': {'d2': 1, 'fruit': 1}}})
    out = tmp_path / 'scores.json'
    r = subprocess.run([sys.executable, '-m', 'causalneg.mteb_adapter', 'packaged:all-MiniLM-L6-v2', '--beir', str(tmp_path / 'beir'),
                        '--out', str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    scores = json.loads(out.read_text())['beir-test']['test']
    assert set(scores) == {'ndcg@10', 'recall@100', 'mrr@10'}
    assert scores['recall@100'] == 1.0 and 0 < scores['ndcg@10'] < 1   # a banana is judged for Italy: no perfect score


def test_cli_needs_a_task():
    r = subprocess.run([sys.executable, '-m', 'causalneg.mteb_adapter', 'packaged:all-MiniLM-L6-v2'], capture_output=True, text=True)
    assert r.returncode == 2 and 'give at least one --task or a --beir folder' in r.stderr
