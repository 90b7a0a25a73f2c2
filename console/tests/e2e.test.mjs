// `node --test tests/` runs files named *.test.mjs; the suite itself is tests/e2e.mjs.
import './e2e.mjs';
