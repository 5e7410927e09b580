-- What an assistant message cost and how it was reached: the reasoning the model streamed beside its answer (shown to
-- the user, never sent back to the model), the model that wrote it, and the provider's usage of the step that
-- produced it ({"prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens"}). NULL for the other
-- messages and for messages stored before this migration.
ALTER TABLE chat_messages
    ADD COLUMN reasoning text,
    ADD COLUMN model     text,
    ADD COLUMN usage     jsonb;
