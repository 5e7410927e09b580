// Validates a JSON array of UIMessages (stdin) with the `ai` package's own `safeValidateUIMessages`, the check
// `useChat`'s server side and `validateUIMessages` apply to stored messages. The first argument names the package
// (`ai` = v6, `ai5`, `ai7`). Prints {success, error: {name, message} | null} as JSON.

const { safeValidateUIMessages } = await import(process.argv[2] ?? 'ai');

const parts = [];
for await (const part of process.stdin) parts.push(part);
const messages = JSON.parse(Buffer.concat(parts).toString('utf8'));
const result = await safeValidateUIMessages({ messages });
process.stdout.write(
  JSON.stringify({
    success: result.success,
    error: result.success ? null : { name: result.error?.name, message: result.error?.message },
  }),
);
