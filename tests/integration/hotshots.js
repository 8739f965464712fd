// Sends what an application using npm hot-shots (a DogStatsD client) sends,
// for real, over UDP: LLM token counters, generic metrics, an event, a
// service check, and InfluxDB/Telegraf-style tags from a second client.
//
//   node tests/integration/hotshots.js HOST PORT
//
// hot-shots comes from tests/clients/node_modules. Math.random is pinned so
// a sampled metric is always sent (hot-shots drops it at random otherwise);
// the datagram is hot-shots' own. Exits 0 once every send has completed.
'use strict';

const path = require('path');
const StatsD = require(path.join(__dirname, '..', 'clients', 'node_modules', 'hot-shots'));

const host = process.argv[2] || '127.0.0.1';
const port = parseInt(process.argv[3] || '8125', 10);
Math.random = () => 0;

let failed = false;
const onError = (err) => {
  failed = true;
  console.error('hot-shots error:', err && err.message ? err.message : err);
};
const dog = new StatsD({ host, port, protocol: 'udp', maxBufferSize: 0, errorHandler: onError,
                         includeDataDogTags: false });
const tele = new StatsD({ host, port, protocol: 'udp', maxBufferSize: 0, errorHandler: onError,
                          telegraf: true, includeDataDogTags: false });

// each call resolves once hot-shots has handed its datagram to the socket
function sent(fn) {
  return new Promise((resolve) => fn((err) => {
    if (err) onError(err);
    resolve();
  }));
}

const llm = { provider: 'openai', model: 'gpt-4o', user: 'hs-user', env: 'test' };

async function main() {
  // sequentially, so the collector sees them in this order
  await sent((cb) => dog.increment('llm.tokens', 1027, 1, Object.assign({ type: 'input' }, llm), cb));
  await sent((cb) => dog.increment('llm.tokens', 311, 1, Object.assign({ type: 'output' }, llm), cb));
  await sent((cb) => dog.increment('llm.tokens', 500, 0.5, Object.assign({ type: 'cache_read' }, llm), cb));
  await sent((cb) => dog.gauge('hs.gauge', 42.5, 1, { env: 'test' }, cb));
  await sent((cb) => dog.gauge('hs.neg', -3, 1, { env: 'test' }, cb));
  await sent((cb) => dog.timing('hs.timer', 250, 1, { env: 'test' }, cb));
  await sent((cb) => dog.histogram('hs.hist', 17, 1, { env: 'test' }, cb));
  await sent((cb) => dog.distribution('hs.dist', 3.25, 1, { env: 'test' }, cb));
  await sent((cb) => dog.set('hs.set', 'alice', 1, { env: 'test' }, cb));
  await sent((cb) => dog.event('deploy', 'v1.2 rolled out', { alert_type: 'info' }, { env: 'test' }, cb));
  await sent((cb) => dog.check('hs.check', dog.CHECKS.OK, { message: 'fine' }, { env: 'test' }, cb));
  await sent((cb) => tele.increment('hs.tele', 2, 1, { env: 'test', region: 'eu' }, cb));
  await sent((cb) => tele.gauge('hs.tele_gauge', 7, 1, { region: 'eu' }, cb));
  await new Promise((resolve) => dog.close(() => resolve()));
  await new Promise((resolve) => tele.close(() => resolve()));
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
