-- Tool calls waiting for a person's decision: a turn that reaches a tool with
-- `requireApproval` stops here and resumes when the approval is decided.
create table agentry.tool_approvals (
  tenant_id        uuid not null,
  id               uuid not null,
  conversation_id  uuid not null,
  message_id       uuid not null,
  tool_call_id     text not null,
  tool             text not null,
  arguments        jsonb not null,
  agent            text not null,
  status           text not null default 'pending'
                   check (status in ('pending', 'approved', 'denied')),
  comment          text,
  decided_by       text,
  created_at       timestamptz not null default now(),
  decided_at       timestamptz,
  primary key (tenant_id, id),
  foreign key (tenant_id, conversation_id)
    references agentry.conversations (tenant_id, id) on delete cascade
);
create index tool_approvals_tenant_conversation
  on agentry.tool_approvals (tenant_id, conversation_id, created_at);

alter table agentry.tool_approvals enable row level security;
alter table agentry.tool_approvals force row level security;
create policy tenant_isolation on agentry.tool_approvals
  using (tenant_id = (select agentry.current_tenant()))
  with check (tenant_id = (select agentry.current_tenant()));

grant select, insert, update, delete on agentry.tool_approvals to agentry_app;
