// The unmodified OpenAI Node SDK against a running Agentry dev runtime (`make dev`).
// Not part of `make test` (it needs Node and `npm install openai`):
//
//   node e2e/sdk/openai_sdk_check.mjs http://127.0.0.1:8080 "$ACME_KEY"
import assert from "node:assert/strict";
import OpenAI from "openai";

const [base, key] = process.argv.slice(2);
const client = new OpenAI({ baseURL: base + "/v1", apiKey: key, maxRetries: 0 });

const models = (await client.models.list()).data.map((m) => m.id);
assert.ok(models.includes("agent/general") && models.includes("small"), models.join());

const answer = await client.chat.completions.create({
  model: "agent/general", messages: [{ role: "user", content: "Hello there." }],
});
assert.equal(answer.choices[0].message.content, "I can help with that: Hello there.");

let text = "", usage = null;
const stream = await client.chat.completions.create({
  model: "small", stream: true, stream_options: { include_usage: true },
  messages: [{ role: "user", content: "Hello there." }],
});
for await (const chunk of stream) {
  text += chunk.choices[0]?.delta?.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
assert.equal(text, "I can help with that: Hello there.");
assert.ok(usage?.total_tokens > 0);

await assert.rejects(
  client.chat.completions.create({ model: "agent/nobody", messages: [{ role: "user", content: "x" }] }),
  (e) => e instanceof OpenAI.NotFoundError && e.code === "model_not_found",
);
console.log("ok: models, agent, streaming with usage, unknown model");
