// The Vercel AI SDK against a running gateway, as an app would use it: `openai(model)` (the
// Responses API, the provider's default), `openai.chat(model)`, `openai.completion(model)` and
// `anthropic(model)` (Messages). Prints one JSON object with what each call got back.
// Usage: node clients.mjs <gateway url> <key> <model>
import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const [url, apiKey, model] = process.argv.slice(2);
const openai = createOpenAI({ baseURL: `${url}/v1`, apiKey });
const anthropic = createAnthropic({ baseURL: `${url}/v1`, apiKey });
const out = {};

async function attempt(name, run) {
  try {
    out[name] = await run();
  } catch (error) {
    out[name] = { error: String(error?.message ?? error) };
  }
}

await attempt("responses", async () => {
  const r = await generateText({ model: openai(model), prompt: "What is a gateway?", maxRetries: 0 });
  return { text: r.text, finishReason: r.finishReason, inputTokens: r.usage.inputTokens };
});
await attempt("responses_stream", async () => {
  const r = streamText({ model: openai(model), prompt: "Stream it", maxRetries: 0 });
  let text = "";
  for await (const delta of r.textStream) text += delta;
  return { text, finishReason: await r.finishReason };
});
await attempt("responses_tools", async () => {
  const r = await generateText({
    model: openai(model),
    prompt: "Weather in Paris?",
    maxRetries: 0,
    stopWhen: stepCountIs(3),
    tools: {
      get_weather: tool({
        description: "Weather of a city",
        inputSchema: z.object({ city: z.string() }),
        execute: async ({ city }) => `18 C and sunny in ${city}`,
      }),
    },
  });
  return { text: r.text, steps: r.steps.length, toolResults: r.steps.flatMap((s) => s.toolResults.map((t) => t.output)) };
});
await attempt("chat", async () => {
  const r = await generateText({ model: openai.chat(model), prompt: "Chat?", maxRetries: 0 });
  return { text: r.text };
});
await attempt("completion", async () => {
  const r = await generateText({ model: openai.completion(model), prompt: "Complete?", maxRetries: 0 });
  return { text: r.text };
});
await attempt("messages", async () => {
  const r = await generateText({ model: anthropic(model), prompt: "Anthropic?", maxRetries: 0 });
  return { text: r.text, finishReason: r.finishReason };
});
await attempt("messages_stream", async () => {
  const r = streamText({ model: anthropic(model), prompt: "Anthropic stream", maxRetries: 0 });
  let text = "";
  for await (const delta of r.textStream) text += delta;
  return { text };
});
console.log(JSON.stringify(out));
