// The cellos explorer: a read-only single page over this ledger's /v1 JSON API.
//
// Routes live in the URL's hash (#/nodes?page=2, #/nodes/17, ...), so the ledger
// serves one page and every view can be bookmarked. Lists are paged by the server
// (?offset=&limit=, the total in X-Total-Count), so 10,000 nodes cost one small
// request per page. A long-poll on /v1/events notices each new block and redraws
// the views that show live data. All text from the chain is inserted as text
// (textContent), never as HTML.
'use strict';

(() => {
  const PAGE = 50;
  const FARM_PAGE = 20;
  const RECENT_BLOCKS = 10;
  const view = document.getElementById('view');
  const live = document.getElementById('live');
  const banner = document.getElementById('banner');

  // What the page knows about the chain, and which render is the current one.
  const chain = { status: null, next: 1 };
  let renderSeq = 0;
  let shownTop = 0; // highest block the overview has shown (to flash new rows)

  // ---- DOM and formatting helpers -----------------------------------------------

  // h('td', {class: 'num'}, 'text', child, [more]): an element; strings become text.
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'dataset') Object.assign(e.dataset, v);
      else if (k === 'on') for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const k of kids.flat(Infinity)) {
      if (k === null || k === undefined || k === false) continue;
      e.append(k instanceof Node ? k : String(k));
    }
    return e;
  }

  const link = (href, text, cls) => h('a', { href, class: cls }, text);
  const nodeLink = (id) => link(`#/nodes/${id}`, `node ${id}`);
  const farmLink = (id) => link(`#/farms/${id}`, `farm ${id}`);
  const contractLink = (id) => link(`#/contracts/${id}`, `contract ${id}`);
  const short = (hex) => (hex && hex.length > 16 ? `${hex.slice(0, 8)}…${hex.slice(-6)}` : hex || '');
  const keyLink = (k) => h('a', { href: `#/accounts/${k}`, class: 'mono', title: k }, short(k));
  const num = (n) => (typeof n === 'number' ? n.toLocaleString('en-US') : String(n ?? ''));

  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let v = n;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
  }

  function when(t) {
    if (!t) return 'never';
    return new Date(t * 1000).toISOString().replace('T', ' ').slice(0, 19);
  }

  function dur(s) {
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  // Ledger time now: the status's, so "ago" agrees with the ledger's clock.
  const now = () => (chain.status ? chain.status.time : Math.floor(Date.now() / 1000));
  const ago = (t) => (t ? `${dur(Math.max(0, now() - t))} ago` : 'never');

  // A contract state is "pending" or {"closed": cause}; a cause is a word or {"rejected": why}.
  function stateText(s) {
    if (typeof s === 'string') return s;
    if (s && s.closed !== undefined) {
      const c = s.closed;
      if (typeof c === 'string') return `closed (${c.replace(/_/g, ' ')})`;
      if (c && c.rejected !== undefined) return `closed (rejected: ${c.rejected})`;
      return 'closed';
    }
    return JSON.stringify(s);
  }
  const stateTag = (s) => {
    const t = stateText(s);
    return h('span', { class: `tag ${t.split(' ')[0]}` }, t);
  };
  const statusTag = (s) => h('span', { class: `tag ${s}` }, s);

  function usage(reserved, total, fmt) {
    const pct = total > 0 ? Math.min(100, (100 * reserved) / total) : 0;
    const bar = h('span', { class: 'bar' }, h('span'));
    bar.firstChild.style.width = `${pct}%`; // CSSOM, which the CSP allows
    return [bar, `${fmt(reserved)} / ${fmt(total)}`];
  }

  function table(cls, heads, rows, empty) {
    if (!rows.length) return h('p', { class: 'empty' }, empty || 'None.');
    return h(
      'table',
      { class: cls },
      h('thead', {}, h('tr', {}, heads.map(([t, c]) => h('th', { class: c }, t)))),
      h('tbody', {}, rows),
    );
  }

  function fields(pairs) {
    return h('dl', { class: 'fields' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  }

  // ---- the API ------------------------------------------------------------------

  class NotFound extends Error {}

  // GET a /v1 path: {data, total} (total from X-Total-Count on lists).
  async function get(path) {
    const r = await fetch(path, { headers: { accept: 'application/json' } });
    let body = null;
    try {
      body = await r.json();
    } catch (_) {
      // an error page that is not JSON; its status says enough
    }
    if (r.status === 404) throw new NotFound((body && body.error) || `${path}: not found`);
    if (!r.ok) throw new Error((body && body.error) || `${path}: HTTP ${r.status}`);
    const total = r.headers.get('x-total-count');
    return { data: body, total: total === null ? null : Number(total) };
  }
  const data = async (path) => (await get(path)).data;
  const count = async (path) => (await get(path)).total;
  // The thing, or null when the ledger says it does not exist.
  async function maybe(path) {
    try {
      return await data(path);
    } catch (e) {
      if (e instanceof NotFound) return null;
      throw e;
    }
  }

  function qs(params) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== '' && v !== null && v !== undefined) p.set(k, v);
    return p.toString();
  }

  // ---- routing ------------------------------------------------------------------

  function route() {
    const raw = location.hash.replace(/^#/, '') || '/';
    const [path, query] = raw.split('?');
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    return { parts, params: new URLSearchParams(query || ''), raw };
  }

  const views = {
    '': overview,
    farms: (p, r) => (p[1] !== undefined ? farmPage(p[1]) : farmList(r.params)),
    nodes: (p, r) => (p[1] !== undefined ? nodePage(p[1]) : nodeList(r.params)),
    contracts: (p, r) => (p[1] !== undefined ? contractPage(p[1]) : contractList(r.params)),
    accounts: (p) => accountPage(p[1] || ''),
    search: (p) => search(p.slice(1).join('/')),
  };
  // Views that show live data and are redrawn when a block arrives.
  const liveViews = new Set(['', 'farms', 'nodes', 'contracts', 'accounts']);

  // Renders the current route into a detached node and swaps it in, unless the
  // route changed meanwhile (a newer render owns the page then).
  async function render(quiet) {
    const seq = ++renderSeq;
    const r = route();
    const name = r.parts[0] || '';
    for (const a of document.querySelectorAll('nav a')) {
      a.classList.toggle('active', a.dataset.nav === (name || 'overview'));
    }
    const fn = views[name];
    let content;
    try {
      content = fn ? await fn(r.parts, r) : h('p', { class: 'error' }, `No page ${r.raw}.`);
    } catch (e) {
      content = h('div', {}, h('h1', {}, e instanceof NotFound ? 'Not found' : 'Error'), h('p', { class: 'error' }, e.message));
    }
    if (seq !== renderSeq) return;
    if (content === null) return; // the view moved to another route
    const keep = quiet ? window.scrollY : 0;
    view.replaceChildren(content);
    window.scrollTo(0, keep);
    view.dataset.ready = r.raw;
  }

  function go(hash, replace) {
    if (replace) location.replace(hash);
    else location.hash = hash;
  }

  function pager(offset, size, total, what, onPage) {
    const page = Math.floor(offset / size) + 1;
    const pages = Math.max(1, Math.ceil(total / size));
    const info = offset < total ? `${num(offset + 1)}–${num(Math.min(total, offset + size))} of ${num(total)} ${what}` : `${num(total)} ${what}`;
    return h(
      'div',
      { class: 'pager' },
      h('span', { class: 'info', dataset: { total } }, info),
      h('button', { type: 'button', class: 'prev', disabled: page <= 1, on: { click: () => onPage(page - 1) } }, '‹ Prev'),
      h('span', {}, `page ${num(page)} of ${num(pages)}`),
      h('button', { type: 'button', class: 'next', disabled: page >= pages, on: { click: () => onPage(page + 1) } }, 'Next ›'),
    );
  }

  const pageOf = (params) => Math.max(1, parseInt(params.get('page') || '1', 10) || 1);

  // ---- overview -----------------------------------------------------------------

  function txKind(body) {
    const k = Object.keys(body || {})[0] || '?';
    return k.replace(/(^|_)([a-z])/g, (_, __, c) => c.toUpperCase());
  }

  // The ids a transaction names, as links.
  function txSubject(body) {
    const b = Object.values(body || {})[0] || {};
    const out = [];
    if (b.node !== undefined) out.push(nodeLink(b.node));
    if (b.contract !== undefined) out.push(contractLink(b.contract));
    if (b.farm !== undefined) out.push(farmLink(b.farm));
    if (b.to !== undefined) out.push('to ', keyLink(b.to));
    if (b.amount !== undefined) out.push(` ${num(b.amount)}`);
    if (b.name !== undefined) out.push(`"${b.name}"`);
    return out.flatMap((x, i) => (i ? [' ', x] : [x]));
  }

  async function overview() {
    const st = await data('/v1/status');
    chain.status = st;
    const from = Math.max(1, st.height - RECENT_BLOCKS + 1);
    const [farms, nodes, up, contracts, open, blocks] = await Promise.all([
      count('/v1/farms?limit=0'),
      count('/v1/nodes?limit=0'),
      count('/v1/nodes?status=up&limit=0'),
      count('/v1/contracts?limit=0'),
      count('/v1/contracts?open=true&limit=0'),
      st.height > 0 ? data(`/v1/blocks?${qs({ from, limit: RECENT_BLOCKS })}`) : [],
    ]);
    const card = (k, v, s, href, id) =>
      h('a', { class: 'card', href, id }, h('div', { class: 'k' }, k), h('div', { class: 'v' }, v), h('div', { class: 's' }, s));
    const newest = [...blocks].reverse();
    // A block's hash is the next block's prev_hash; the newest one's is the head.
    const hashOf = (i) => (i === 0 ? st.head : newest[i - 1].header.prev_hash);
    const before = shownTop;
    shownTop = st.height;
    const blockRows = newest.map((b, i) =>
      h(
        'tr',
        { dataset: { height: b.header.height }, class: before && b.header.height > before ? 'new' : null },
        h('td', { class: 'num' }, num(b.header.height)),
        h('td', {}, when(b.header.time)),
        h('td', { class: 'num' }, num(b.header.tx_count)),
        h('td', { class: 'mono', title: hashOf(i) }, short(hashOf(i))),
      ),
    );
    const txs = newest.flatMap((b) => b.txs.map((t) => ({ height: b.header.height, t }))).slice(0, 12);
    const txRows = txs.map(({ height, t }) =>
      h(
        'tr',
        {},
        h('td', { class: 'num' }, num(height)),
        h('td', {}, txKind(t.tx.body)),
        h('td', {}, keyLink(t.tx.signer)),
        h('td', {}, txSubject(t.tx.body)),
      ),
    );
    return h(
      'div',
      {},
      h('h1', {}, `Ledger ${st.chain_id}`, st.dev_mode ? h('span', { class: 'tag' }, ' dev') : null),
      h(
        'div',
        { class: 'cards' },
        card('Block height', num(st.height), `ledger time ${when(st.time)}`, '#/', 'height'),
        card('Farms', num(farms), 'registered', '#/farms', 'farms'),
        card('Nodes', num(nodes), `${num(up)} up`, '#/nodes', 'nodes'),
        card('Contracts', num(contracts), `${num(open)} open`, '#/contracts', 'contracts'),
      ),
      h(
        'div',
        { class: 'cols' },
        h(
          'section',
          {},
          h('h2', {}, 'Recent blocks'),
          table('blocks', [['Height', 'num'], ['Time'], ['Txs', 'num'], ['Hash']], blockRows, 'No block yet.'),
        ),
        h(
          'section',
          {},
          h('h2', {}, 'Recent transactions'),
          table('txs', [['Block', 'num'], ['Type'], ['Signer'], ['Subject']], txRows, 'No transaction yet.'),
        ),
      ),
    );
  }

  // ---- nodes --------------------------------------------------------------------

  function nodeRows(nodes) {
    const res = (n, k, fmt) => h('td', {}, usage(n.reserved[k], n.capacity[k], fmt));
    return nodes.map((n) =>
      h(
        'tr',
        { dataset: { node: n.id } },
        h('td', { class: 'num' }, link(`#/nodes/${n.id}`, n.id)),
        h('td', {}, farmLink(n.farm)),
        h('td', {}, statusTag(n.status), n.approved ? '' : h('span', { class: 'muted' }, ' (not approved)')),
        res(n, 'cru', String),
        res(n, 'mru', bytes),
        res(n, 'sru', bytes),
        res(n, 'hru', bytes),
        h('td', {}, n.last_uptime ? dur(n.uptime_secs) : '—'),
        h('td', {}, ago(n.last_uptime)),
      ),
    );
  }

  const NODE_HEADS = [['ID', 'num'], ['Farm'], ['Status'], ['CPU cores'], ['Memory'], ['SSD'], ['HDD'], ['Uptime'], ['Last seen']];

  // A page of nodes, filtered; `base` is the route the pager links to.
  async function nodeTable(params, base, fixed) {
    const page = pageOf(params);
    const farm = fixed.farm ?? params.get('farm') ?? '';
    const status = params.get('status') || '';
    const offset = (page - 1) * PAGE;
    const { data: nodes, total } = await get(`/v1/nodes?${qs({ farm, status, offset, limit: PAGE })}`);
    const to = (over) => {
      const p = { farm: fixed.farm === undefined ? farm : '', status, page, ...over };
      return `${base}?${qs(p)}`;
    };
    const statusSel = h(
      'select',
      { id: 'status', 'aria-label': 'Status', on: { change: (e) => go(to({ status: e.target.value, page: 1 })) } },
      ['', 'up', 'standby', 'decommissioned'].map((s) => h('option', { value: s, selected: s === status }, s || 'any status')),
    );
    const filters = [statusSel];
    if (fixed.farm === undefined) {
      const farmIn = h('input', { id: 'farm', type: 'number', min: 0, placeholder: 'farm id', value: farm, 'aria-label': 'Farm' });
      farmIn.addEventListener('change', () => go(to({ farm: farmIn.value, page: 1 })));
      filters.unshift(farmIn);
    }
    return h(
      'div',
      {},
      h('div', { class: 'pager' }, filters),
      pager(offset, PAGE, total, 'nodes', (p) => go(to({ page: p }))),
      table('nodes', NODE_HEADS, nodeRows(nodes), 'No node matches.'),
    );
  }

  async function nodeList(params) {
    return h('div', {}, h('h1', {}, 'Nodes'), await nodeTable(params, '#/nodes', {}));
  }

  /** A PCI id as lspci writes it: four hexadecimal digits. */
  const hex4 = (x) => x.toString(16).padStart(4, '0');

  async function nodePage(id) {
    if (!/^\d+$/.test(id)) throw new NotFound(`"${id}" is not a node id.`);
    const [n, cs] = await Promise.all([data(`/v1/nodes/${id}`), contractTable(route().params, `#/nodes/${id}`, { node: id })]);
    const free = (k) => Math.max(0, n.capacity[k] - n.reserved[k]);
    const capRow = (label, k, fmt) =>
      h('tr', {}, h('td', {}, label), h('td', { class: 'num' }, fmt(n.capacity[k])), h('td', { class: 'num' }, fmt(n.reserved[k])), h('td', { class: 'num' }, fmt(free(k))), h('td', {}, usage(n.reserved[k], n.capacity[k], fmt)));
    const cores = (x) => `${x}`;
    return h(
      'div',
      { dataset: { node: n.id } },
      h('h1', {}, `Node ${n.id} `, statusTag(n.status)),
      fields([
        ['Node id', h('span', { id: 'node-id' }, n.id)],
        ['Public key', h('span', { class: 'mono' }, keyLink(n.pubkey))],
        ['Farm', farmLink(n.farm)],
        ['Approved', n.approved ? 'yes' : 'no, waiting for the farmer'],
        ['Status', n.status],
        ['Last seen', `${ago(n.last_uptime)}${n.last_uptime ? ` (${when(n.last_uptime)})` : ''}`],
        ['Uptime at last report', n.last_uptime ? dur(n.uptime_secs) : '—'],
        ['Registered', when(n.registered_at)],
        ['Persistent state', n.persistent ? 'yes' : 'no (takes no contracts)'],
        ['Virtual machines', n.accel === 'kvm' ? 'KVM (hardware)' : 'TCG (emulated, slow)'],
        ['Location', n.location || '—'],
        ['Encryption key', h('span', { class: 'mono' }, n.encryption_key)],
      ]),
      h('h2', {}, 'Capacity'),
      table('capacity', [['Resource'], ['Total', 'num'], ['Reserved', 'num'], ['Free', 'num'], ['Use']], [
        capRow('CPU (cores)', 'cru', cores),
        capRow('Memory', 'mru', bytes),
        capRow('SSD', 'sru', bytes),
        capRow('HDD', 'hru', bytes),
      ]),
      h('h2', {}, 'Interfaces'),
      table(
        'interfaces',
        [['Name'], ['MAC'], ['Addresses']],
        n.interfaces.map((i) => h('tr', {}, h('td', {}, i.name), h('td', { class: 'mono' }, i.mac), h('td', {}, i.ips.join(', ') || '—'))),
        'No interface reported.',
      ),
      h('h2', {}, 'GPUs'),
      table(
        'gpus',
        [['PCI address'], ['Vendor'], ['Device'], ['IOMMU group']],
        (n.gpus || []).map((g) => h('tr', {}, h('td', { class: 'mono' }, g.address), h('td', { class: 'mono' }, hex4(g.vendor)), h('td', { class: 'mono' }, hex4(g.device)), h('td', {}, g.iommu_group === null ? 'none (no passthrough)' : `${g.iommu_group}`))),
        'No GPU reported.',
      ),
      h('h2', {}, 'Contracts on this node'),
      cs,
    );
  }

  // ---- contracts ----------------------------------------------------------------

  const CONTRACT_HEADS = [['ID', 'num'], ['State'], ['Node'], ['Owner'], ['Price / h', 'num'], ['Escrow', 'num'], ['Paid', 'num'], ['Created']];

  function contractRows(list) {
    return list.map((c) =>
      h(
        'tr',
        { dataset: { contract: c.id } },
        h('td', { class: 'num' }, link(`#/contracts/${c.id}`, c.id)),
        h('td', {}, stateTag(c.state)),
        h('td', {}, nodeLink(c.node)),
        h('td', {}, keyLink(c.owner)),
        h('td', { class: 'num' }, num(c.price_per_hour)),
        h('td', { class: 'num' }, num(c.escrow)),
        h('td', { class: 'num' }, num(c.paid)),
        h('td', {}, when(c.created_at)),
      ),
    );
  }

  async function contractTable(params, base, fixed) {
    const page = pageOf(params);
    const open = params.get('open') === 'true' ? 'true' : '';
    const offset = (page - 1) * PAGE;
    const { data: list, total } = await get(`/v1/contracts?${qs({ ...fixed, open, offset, limit: PAGE })}`);
    const to = (over) => `${base}?${qs({ open, page, ...over })}`;
    const openBox = h('input', { type: 'checkbox', id: 'open', checked: open === 'true' });
    openBox.addEventListener('change', () => go(to({ open: openBox.checked ? 'true' : '', page: 1 })));
    return h(
      'div',
      {},
      h('div', { class: 'pager' }, h('label', {}, openBox, ' open only')),
      pager(offset, PAGE, total, 'contracts', (p) => go(to({ page: p }))),
      table('contracts', CONTRACT_HEADS, contractRows(list), 'No contract matches.'),
    );
  }

  async function contractList(params) {
    return h('div', {}, h('h1', {}, 'Contracts'), await contractTable(params, '#/contracts', {}));
  }

  async function contractPage(id) {
    if (!/^\d+$/.test(id)) throw new NotFound(`"${id}" is not a contract id.`);
    const c = await data(`/v1/contracts/${id}`);
    const r = c.resources;
    return h(
      'div',
      { dataset: { contract: c.id } },
      h('h1', {}, `Contract ${c.id} `, stateTag(c.state)),
      fields([
        ['State', stateText(c.state)],
        ['Owner', keyLink(c.owner)],
        ['Node', nodeLink(c.node)],
        ['Farm', farmLink(c.farm)],
        ['Reserved', `${r.cru} cores, ${bytes(r.mru)} memory, ${bytes(r.sru)} SSD, ${bytes(r.hru)} HDD`],
        ['Public IPs', c.public_ips.join(', ') || '—'],
        ['Price per hour', num(c.price_per_hour)],
        ['Price per GiB of traffic', num(c.price_per_gib)],
        ['Escrow', num(c.escrow)],
        ['Paid to the farm', num(c.paid)],
        ['Billed until', when(c.billed_until)],
        ['Measured use', `${((c.cpu_usec || 0) / 1e6).toFixed(1)} s of CPU in all, ${bytes(c.memory_bytes || 0)} memory at the last report`],
        c.suspended_at ? ['Suspended at', when(c.suspended_at)] : null,
        ['Created', when(c.created_at)],
        ['Deployment hash', h('span', { class: 'mono' }, c.deployment_hash)],
        ['Accepted hash', h('span', { class: 'mono' }, c.accepted_hash || 'not accepted yet')],
      ]),
    );
  }

  // ---- farms --------------------------------------------------------------------

  const prices = (p) => `CU ${num(p.cu)} · SU ${num(p.su)} · NU ${num(p.nu)} · IP ${num(p.ipu)}`;
  const freeIps = (f) => f.public_ips.filter((i) => i.leased_by === null).length;

  async function farmList(params) {
    const page = pageOf(params);
    const offset = (page - 1) * FARM_PAGE;
    const { data: farms, total } = await get(`/v1/farms?${qs({ offset, limit: FARM_PAGE })}`);
    // Node counts of the farms on this page only: one cheap count each.
    const counts = await Promise.all(farms.map((f) => count(`/v1/nodes?farm=${f.id}&limit=0`)));
    const rows = farms.map((f, i) =>
      h(
        'tr',
        { dataset: { farm: f.id } },
        h('td', { class: 'num' }, link(`#/farms/${f.id}`, f.id)),
        h('td', {}, link(`#/farms/${f.id}`, f.name)),
        h('td', {}, keyLink(f.owner)),
        h('td', { class: 'num' }, link(`#/nodes?farm=${f.id}`, num(counts[i]))),
        h('td', {}, prices(f.prices)),
        h('td', { class: 'num' }, `${freeIps(f)} / ${f.public_ips.length}`),
      ),
    );
    return h(
      'div',
      {},
      h('h1', {}, 'Farms'),
      pager(offset, FARM_PAGE, total, 'farms', (p) => go(`#/farms?page=${p}`)),
      table('farms', [['ID', 'num'], ['Name'], ['Owner'], ['Nodes', 'num'], ['Prices per hour'], ['Free IPs', 'num']], rows, 'No farm yet.'),
    );
  }

  async function farmPage(id, params) {
    if (!/^\d+$/.test(id)) throw new NotFound(`"${id}" is not a farm id.`);
    const f = await data(`/v1/farms/${id}`);
    const p = params || route().params;
    return h(
      'div',
      { dataset: { farm: f.id } },
      h('h1', {}, `Farm ${f.id}: ${f.name}`),
      fields([
        ['Owner', keyLink(f.owner)],
        ['Prices per hour', prices(f.prices)],
        ['Enrollment key', f.enrollment_key ? h('span', { class: 'mono' }, f.enrollment_key) : 'none (the farmer approves each node)'],
        ['Public IPs', f.public_ips.length ? f.public_ips.map((i) => `${i.ip} via ${i.gateway}${i.leased_by === null ? '' : ` (contract ${i.leased_by})`}`).join(', ') : '—'],
      ]),
      h('h2', {}, 'Nodes'),
      await nodeTable(p, `#/farms/${f.id}`, { farm: f.id }),
    );
  }

  // ---- accounts -----------------------------------------------------------------

  async function accountPage(key) {
    if (!/^[0-9a-fA-F]{64}$/.test(key)) throw new NotFound(`"${key}" is not a key (64 hex digits).`);
    const [acct, nodes, farms, ownedContracts, cs] = await Promise.all([
      maybe(`/v1/accounts/${key}`),
      data(`/v1/nodes?pubkey=${key}`),
      data('/v1/farms'),
      count(`/v1/contracts?${qs({ owner: key, limit: 0 })}`),
      contractTable(route().params, `#/accounts/${key}`, { owner: key }),
    ]);
    const owned = farms.filter((f) => f.owner === key.toLowerCase());
    if (!acct && !nodes.length && !owned.length && !ownedContracts) throw new NotFound(`No account, node or farm has key ${key}.`);
    return h(
      'div',
      {},
      h('h1', {}, 'Account'),
      fields([
        ['Key', h('span', { class: 'mono', id: 'account-key' }, key.toLowerCase())],
        ['Balance', acct ? num(acct.balance) : 'no account'],
        ['Nonce', acct ? num(acct.nonce) : '—'],
        ['Encryption key', acct && acct.encryption_key ? h('span', { class: 'mono' }, acct.encryption_key) : '—'],
        nodes.length ? ['Node', nodeLink(nodes[0].id)] : null,
        owned.length ? ['Farms', owned.flatMap((f, i) => [i ? ', ' : '', link(`#/farms/${f.id}`, `${f.name} (${f.id})`)])] : null,
      ]),
      h('h2', {}, 'Contracts owned'),
      cs,
    );
  }

  // ---- search -------------------------------------------------------------------

  // Opens the one thing `q` names, or lists what it could mean. `node 5`, `c 7`,
  // `farm 2` say which kind; a bare number is looked up as all three; 64 hex
  // digits are a node's key or an account; other text matches farm names.
  async function search(q) {
    q = q.trim();
    const title = h('h1', {}, `Search: ${q}`);
    const typed = /^(node|n|contract|c|farm|f)\s*#?\s*(\d+)$/i.exec(q);
    const kinds = { n: 'nodes', c: 'contracts', f: 'farms' };
    if (typed) {
      go(`#/${kinds[typed[1][0].toLowerCase()]}/${typed[2]}`, true);
      return null;
    }
    let hits = [];
    if (/^\d+$/.test(q)) {
      const found = await Promise.all(['nodes', 'contracts', 'farms'].map((k) => maybe(`/v1/${k}/${q}`)));
      hits = ['nodes', 'contracts', 'farms'].filter((_, i) => found[i]).map((k) => [`#/${k}/${q}`, `${k.slice(0, -1)} ${q}`]);
    } else if (/^[0-9a-fA-F]{64}$/.test(q)) {
      const [nodes, acct] = await Promise.all([data(`/v1/nodes?pubkey=${q}`), maybe(`/v1/accounts/${q}`)]);
      // A node's key opens the node (its account is a link away).
      if (nodes.length) hits = [[`#/nodes/${nodes[0].id}`, `node ${nodes[0].id}`]];
      else if (acct) hits = [[`#/accounts/${q.toLowerCase()}`, 'account']];
    } else if (q) {
      const farms = await data('/v1/farms');
      const needle = q.toLowerCase();
      hits = farms.filter((f) => f.name.toLowerCase().includes(needle)).slice(0, 50).map((f) => [`#/farms/${f.id}`, `farm ${f.id}: ${f.name}`]);
    }
    if (hits.length === 1) {
      go(hits[0][0], true);
      return null;
    }
    if (!hits.length) return h('div', {}, title, h('p', { class: 'empty' }, 'Nothing on this ledger matches. Try a node, contract or farm id, a key, or a farm name.'));
    return h('div', {}, title, h('ul', { class: 'results' }, hits.map(([href, t]) => h('li', {}, link(href, t)))));
  }

  // ---- live updates -------------------------------------------------------------

  function setLive(ok, text) {
    live.className = `live ${ok ? 'on' : 'off'}`;
    live.textContent = text;
    banner.hidden = ok;
    if (!ok) banner.textContent = 'The ledger does not answer; retrying.';
  }

  let redrawing = false;
  let redrawAgain = false;
  // Redraws the current view for a new block; blocks that come while a redraw
  // runs are folded into one more redraw.
  async function onBlock() {
    if (redrawing) {
      redrawAgain = true;
      return;
    }
    redrawing = true;
    try {
      do {
        redrawAgain = false;
        // Not while the reader is typing into a filter of the view: a redraw
        // would throw the input away.
        const typing = view.contains(document.activeElement) && /^(INPUT|SELECT)$/.test(document.activeElement.tagName);
        if (!typing && liveViews.has(route().parts[0] || '')) await render(true);
      } while (redrawAgain);
    } finally {
      redrawing = false;
    }
  }

  // Long-polls /v1/events for the next block; its arrival redraws the view.
  async function follow() {
    let delay = 1000;
    let started = false;
    for (;;) {
      try {
        if (!started) {
          chain.status = await data('/v1/status');
          chain.next = chain.status.height + 1;
          started = true;
        }
        setLive(true, `live · block ${num(chain.next - 1)}`);
        const page = await data(`/v1/events?${qs({ from: chain.next, wait: 25, limit: 1 })}`);
        delay = 1000;
        if (page.next > chain.next) {
          chain.status = await data('/v1/status');
          chain.next = Math.max(page.next, chain.status.height + 1);
          setLive(true, `live · block ${num(chain.next - 1)}`);
          onBlock();
        }
      } catch (e) {
        setLive(false, 'offline');
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(30000, delay * 2);
      }
    }
  }

  // ---- start --------------------------------------------------------------------

  document.getElementById('search').addEventListener('submit', (e) => {
    e.preventDefault();
    const q = document.getElementById('q').value.trim();
    const target = `#/search/${encodeURIComponent(q)}`;
    if (!q) return;
    if (location.hash === target) render(false);
    else go(target);
  });
  window.addEventListener('hashchange', () => render(false));
  render(false);
  follow();
})();
