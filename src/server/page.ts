/**
 * The web page at GET /: pick or drop photos, each is POSTed to /caption as raw bytes and shown with its
 * caption, the beam candidates with their scores, and the time the request took. One self-contained
 * document (inline style and script, no external assets, works offline); the Content-Security-Policy it is
 * served with forbids loading anything from elsewhere. Captions are inserted as text, never as HTML.
 */

/** Inline script and style only; images from the photos the user picked; requests to this server only. */
export const PAGE_CSP =
  "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob: data:; " +
  "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const STYLE = `
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}
header h1{font-size:20px;margin:0}
header p{margin:2px 0 0;color:#b8c0cf;font-size:13px}
main{max-width:960px;margin:0 auto;padding:20px 24px}
#drop{border:2px dashed #8a94a8;border-radius:10px;padding:28px;text-align:center;background:#fff;cursor:pointer}
#drop.over{border-color:#2f6fed;background:#eaf1ff}
#drop strong{color:#2f6fed}
#controls{display:flex;gap:16px;flex-wrap:wrap;align-items:center;margin:14px 0}
#controls label{font-size:13px;color:#4a5366}
#controls input,#controls select{margin-left:6px;padding:3px 6px;font:inherit}
#controls input{width:70px}
#results{display:grid;gap:14px}
.card{display:flex;gap:16px;background:#fff;border-radius:10px;padding:14px;box-shadow:0 1px 3px #0002}
.card img{width:160px;height:160px;object-fit:cover;border-radius:6px;background:#dde1e8;flex:none}
.card .body{flex:1;min-width:0}
.name{font-size:12px;color:#6b7385;word-break:break-all}
.caption{overflow-wrap:anywhere;font-size:19px;font-weight:600;margin:4px 0 8px;color:#10141c}
.caption.pending{color:#8a94a8;font-weight:400}
.error{color:#b42318;font-weight:600}
.time{font-size:12px;color:#6b7385}
ol.candidates{margin:6px 0 0;padding-left:22px;font-size:14px;overflow-wrap:anywhere}
ol.candidates li span.score{color:#6b7385;font-variant-numeric:tabular-nums;margin-left:8px}
`;

const SCRIPT = `
'use strict';
const $ = (id) => document.getElementById(id);
const drop = $('drop'), input = $('file'), results = $('results');
fetch('health').then((r) => r.json()).then((h) => {
  const m = h.model || {};
  $('model').textContent = [m.description, m.backend && 'backend ' + m.backend].filter(Boolean).join(' · ');
  const d = h.defaults || {}, l = h.limits || {};
  if (d.decode) $('decode').value = d.decode;
  if (d.beam_size) $('beam').value = d.beam_size;
  if (d.max_tokens) $('tokens').value = d.max_tokens;
  if (l.beamSize) $('beam').max = l.beamSize;
  if (l.maxTokens) $('tokens').max = l.maxTokens;
}).catch(() => { $('model').textContent = 'model information unavailable'; });

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

async function captionFile(file) {
  const card = el('div', 'card');
  const img = el('img');
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  const body = el('div', 'body');
  const cap = el('div', 'caption pending', 'captioning…');
  const time = el('div', 'time');
  body.append(el('div', 'name', file.name), cap, time);
  card.append(img, body);
  results.prepend(card);
  const q = new URLSearchParams({ decode: $('decode').value });
  if ($('decode').value === 'beam') q.set('beam_size', $('beam').value);
  q.set('max_tokens', $('tokens').value);
  const t0 = performance.now();
  try {
    const res = await fetch('caption?' + q, {
      method: 'POST',
      body: file,
      headers: { 'content-type': file.type || 'application/octet-stream' },
    });
    const j = await res.json();
    const ms = performance.now() - t0;
    time.textContent = (ms / 1000).toFixed(2) + ' s';
    const r = j.results && j.results[0];
    if (!res.ok || !r || r.error) {
      cap.className = 'caption error';
      cap.textContent = (r && r.error) || j.error || 'HTTP ' + res.status;
      return;
    }
    cap.className = 'caption';
    cap.textContent = r.caption.trim();
    if (r.candidates && r.candidates.length > 1) {
      const ol = el('ol', 'candidates');
      for (const c of r.candidates) {
        const li = el('li', null, c.caption.trim());
        if (typeof c.score === 'number') li.append(el('span', 'score', c.score.toFixed(3)));
        ol.append(li);
      }
      body.append(ol);
    }
  } catch (e) {
    cap.className = 'caption error';
    cap.textContent = 'request failed: ' + e.message;
  }
}

async function captionAll(files) {
  for (const f of files) await captionFile(f);
}

drop.addEventListener('click', () => input.click());
drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') input.click(); });
input.addEventListener('change', () => { captionAll([...input.files]); input.value = ''; });
for (const t of ['dragenter', 'dragover'])
  drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add('over'); });
for (const t of ['dragleave', 'drop'])
  drop.addEventListener(t, () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  captionAll([...e.dataTransfer.files].filter((f) => !f.type || f.type.startsWith('image/')));
});
`;

/** The page's HTML. */
export function pageHtml(): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>clipcap</title>
<style>${STYLE}</style>
</head>
<body>
<header><h1>clipcap</h1><p id="model">loading…</p></header>
<main>
<div id="drop" role="button" tabindex="0"><strong>Choose photos</strong> or drop them here
<input id="file" type="file" accept="image/*" multiple hidden></div>
<div id="controls">
<label>decoder<select id="decode"><option value="beam">beam</option><option value="greedy">greedy</option><option value="nucleus">nucleus</option></select></label>
<label>beam size<input id="beam" type="number" min="1" value="5"></label>
<label>max tokens<input id="tokens" type="number" min="1" value="67"></label>
</div>
<div id="results"></div>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;
}
